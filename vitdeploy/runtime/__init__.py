"""The device side: the one place a model is opened on ONNX Runtime or OpenVINO, bundles
(open and verify), image decoding, the streaming reader and `predict`.

A device needs onnxruntime (or OpenVINO), numpy and pillow: nothing here imports torch, timm or
the onnx package, and an import contract checks it."""
