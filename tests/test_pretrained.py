"""pretrained: true reads timm's weights from the Hugging Face cache without touching the
network, and without cache or network it stops at once with what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HUB_ID = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"


def offline(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_without_cache_or_network_the_build_stops_at_once_in_one_line(tmp_path: Path) -> None:
    recipe = {"name": "p", "model": {"name": "vit_tiny_patch16_224", "pretrained": True}, "output": {"dir": str(tmp_path)}}
    (tmp_path / "p.yaml").write_text(json.dumps(recipe))
    started = time.perf_counter()
    done = offline(
        tmp_path,
        f"import sys; from vitdeploy.cli import main; sys.argv = ['vitdeploy', 'build', {str(tmp_path / 'p.yaml')!r}]; main()",
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{HUB_ID} is not in the Hugging Face cache" in done.stderr and "model.checkpoint" in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert "Traceback" not in done.stderr and len(errors) == 1 and errors[0].startswith("error:")
    assert time.perf_counter() - started < 60  # the hub client alone retries for about a minute


def test_cached_weights_load_from_the_cache_with_no_network(tmp_path: Path) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    snapshot = tmp_path / "hf" / "hub" / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    torch.manual_seed(7)
    state = {k: v.contiguous() for k, v in timm.create_model("vit_tiny_patch16_224").state_dict().items()}
    save_file(state, str(snapshot / "model.safetensors"))
    code = (
        "import torch\nfrom vitdeploy.recipe.schema import ModelSpec\nfrom vitdeploy.torch.models import create_model\n"
        "m = create_model(ModelSpec(name='vit_tiny_patch16_224', pretrained=True))\n"
        "print(float(m.pos_embed.sum()), float(m.head.weight.sum()))\n"
    )
    done = offline(tmp_path, code)
    assert done.returncode == 0, done.stderr[-2000:]
    pos, head = (float(v) for v in done.stdout.split())
    assert abs(pos - float(state["pos_embed"].sum())) < 1e-3 and abs(head - float(state["head.weight"].sum())) < 1e-3
