"""`vitdeploy bench`: paired timing of ONNX files on every provider, memory, per-op profiles and
the tables that show them. No torch."""
