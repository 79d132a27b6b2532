"""Passes on ONNX graphs: graph facts, ONNX Runtime's transformer fusions, INT8 quantization
(dynamic, static, SmoothQuant-ready), bias correction and float16 conversion. No torch."""
