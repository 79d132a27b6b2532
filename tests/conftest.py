"""Shared fixtures. Tests read CIFAR-10 from ../shared/data (never from the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
TEACHER = ROOT / "teachers" / "vit_cifar10.safetensors"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private decode cache for the test session, shared by every test."""
    path = Path(os.environ.get("VITDEPLOY_TEST_CACHE") or tmp_path_factory.mktemp("cache"))
    os.environ["VITDEPLOY_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def cifar10(cache_dir: Path) -> Path:
    """CIFAR-10 decoded once into the session cache; returns the cache root."""
    if not CIFAR_ARCHIVE.is_file():
        pytest.fail(f"missing {CIFAR_ARCHIVE}: tests need the shared CIFAR-10 copy")
    from vitdeploy.data.datasets import DataStore

    DataStore(cache_dir).import_source("cifar10", CIFAR_ARCHIVE)
    return cache_dir


# A two-block ViT small enough to build, export and quantize in seconds.
TINY_OVERRIDES = {"img_size": 32, "patch_size": 8, "num_classes": 10, "embed_dim": 48, "depth": 2, "num_heads": 3}


def tiny_vit(**overrides):
    from vitdeploy.recipe.schema import ModelSpec
    from vitdeploy.torch.models import create_model

    return create_model(ModelSpec(name="vit_tiny_patch16_224", overrides=TINY_OVERRIDES | overrides)).eval()
