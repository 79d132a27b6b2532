"""A hard case for INT8: the reference teacher with outlier channels, the same function.

    python benchmarks/outlier_teacher.py [--out artifacts/outliers] [--channels 2] [--scale 60]

Real ImageNet ViTs have a few LayerNorm output channels far larger than the rest; the
reference teacher, trained briefly on CIFAR-10, has not. This makes a copy that has them without
changing what it computes: in every block, `--channels` channels of each LayerNorm's scale and
shift are multiplied by `--scale` and the same input columns of the Linears reading them (q/k/v,
fc1) divided by it (SmoothQuant run backwards). The FP32 outputs are checked equal; per-tensor
INT8 activation ranges then spend their levels on the outliers. Writes the checkpoint and
`vit_outliers_static_int8.yaml` (the shipped static INT8 recipe pointed at it) into `--out`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from vitdeploy.torch.models import load_model, save_weights
from vitdeploy.torch.smoothing import norm_consumers

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def add_outliers(model: torch.nn.Module, channels: int, scale: float, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for norm, linears in norm_consumers(model):
        picked = torch.randperm(norm.normalized_shape[0], generator=g)[:channels]
        norm.weight[picked] *= scale
        norm.bias[picked] *= scale
        for lin in linears:
            lin.weight[:, picked] /= scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "outliers")
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--scale", type=float, default=60.0)
    args = parser.parse_args()
    teacher = ROOT / "teachers" / "vit_cifar10.safetensors"
    model, original = load_model(teacher).eval(), load_model(teacher).eval()
    add_outliers(model, args.channels, args.scale)
    x = torch.randn(8, 3, 32, 32)
    torch.testing.assert_close(model(x), original(x), rtol=1e-4, atol=1e-4)  # the same function
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / "vit_cifar10_outliers.safetensors"
    save_weights(model, checkpoint)
    recipe = yaml.safe_load((ROOT / "recipes" / "vit_static_int8.yaml").read_text())
    recipe["name"] = "vit_outliers_static_int8"
    outliers = f"{args.channels} outlier channels x{args.scale:g} per LayerNorm"
    recipe["description"] = f"the reference teacher with {outliers}, static INT8"
    recipe["model"]["checkpoint"] = checkpoint.name
    recipe["output"] = {"dir": "."}
    (args.out / "vit_outliers_static_int8.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    print(f"wrote {checkpoint} and {args.out / 'vit_outliers_static_int8.yaml'}")


if __name__ == "__main__":
    main()
