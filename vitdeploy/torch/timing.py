"""PyTorch eager reference for `vitdeploy bench --torch RECIPE`, timed exactly like ONNX cells.

Kept apart from `bench.py` so that the ONNX path never imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vitdeploy.bench.measure import BenchConfig, PeakRSS, Result
from vitdeploy.core.providers import PROVIDERS, get_provider
from vitdeploy.recipe.schema import load_recipe
from vitdeploy.torch.models import count_parameters, create_model


def load_reference(recipe_path: Path) -> tuple[str, torch.nn.Module]:
    recipe = load_recipe(recipe_path)
    return f"torch:{recipe.name}", create_model(recipe.model).eval()


def measure_torch(label: str, model: torch.nn.Module, provider: str, batch: int, threads: int | None, cfg: BenchConfig,
                  compiled: bool = False, amp: bool = False) -> Result:  # fmt: skip
    """One cell; `amp` runs under float16 autocast (CUDA only), the usual PyTorch GPU deployment."""
    kind = ("compile" if compiled else "eager") + (" AMP fp16" if amp else "")
    result = Result(model=f"{label} ({kind})", provider=provider, batch=batch, threads=threads)
    try:
        prov = get_provider(provider)
        if not prov.pytorch_twin:
            twins = " or ".join(p.name for p in PROVIDERS.values() if p.pytorch_twin)
            raise ValueError(f"PyTorch reference runs on {twins}, not {provider}")
        device = torch.device(prov.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available to PyTorch; skipped")
        if amp and device.type != "cuda":
            raise ValueError("AMP float16 is measured on cuda only")
        if threads and device.type == "cpu":
            torch.set_num_threads(threads)
        result.parameters = count_parameters(model)
        size = model.patch_embed.img_size
        x = torch.from_numpy(np.random.default_rng(cfg.seed).standard_normal((batch, 3, *size), dtype=np.float32)).to(device)
        net = torch.compile(model.to(device)) if compiled else model.to(device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def run() -> None:
            with torch.inference_mode(), torch.autocast(device.type, torch.float16, enabled=amp):
                net(x)
            sync()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with PeakRSS() as rss:
            result.time_runner(run, cfg)
        # The model was loaded before the cell began, so its CPU-resident tensors are added here.
        on_host = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()] if t.device.type == "cpu")
        result.peak_rss_mb, result.model_rss_mb = rss.peak_mb, rss.added_mb + on_host / 2**20
        if device.type == "cuda":
            result.peak_device_mb = torch.cuda.max_memory_allocated() / 2**20
    except Exception as e:
        result.fail(e)
    return result
