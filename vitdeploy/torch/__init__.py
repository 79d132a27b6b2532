"""The PyTorch side: timm ViTs and their registries, Nyström attention, pruning, smoothing,
ONNX export with its parity gate, and the training stages.

Importing the package fills the leaf registries (attention kinds and export rules) with the
implementations it ships, as timm's model modules fill its registry."""

from vitdeploy.torch import nystrom  # noqa: F401  (registers its attention kind and export rule)
