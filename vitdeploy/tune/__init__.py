"""`vitdeploy tune`: the fastest artifact within an accuracy budget, measured on this machine."""
