"""Datasets for building and scoring: the decode cache, ImageFolder archives and folders,
preprocessing into batches, and top-1 of any predictor on a split. No torch."""
