"""The base layer: errors, atomic storage, the CPU's facts, the provider registry, the model
architecture record and the typed build/input contracts. Standard library, numpy and rich only;
every other layer may import it."""
