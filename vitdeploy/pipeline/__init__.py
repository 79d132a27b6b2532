"""The build: the pipeline a recipe runs (stages in PyTorch, export, optimize, quantize, score,
publish) and its FP32-export cache. Imports torch; packaging and the report, which do not, are
in `vitdeploy.delivery`."""
