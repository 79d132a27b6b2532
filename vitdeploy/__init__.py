"""vitdeploy: recipes that take a timm Vision Transformer to an evaluated INT8 ONNX artifact."""

__version__ = "0.1.0"
