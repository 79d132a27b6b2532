"""How often INT8 files pick the same class as their FP32 file: top-1 agreement on test images.

    python benchmarks/int8_agreement.py [--model vit_b16] [--images 1000] [--also FILE@openvino ...]

For the random-weight models of `recipes/scale/` top-1 against the labels is chance, so the
check that INT8 kept the model's function is agreement with the FP32 file on the same images
(the build's parity check does this on 64 images; a flip there is 1.6 points). Scores the FP32
export on ONNX Runtime, then vitdeploy's INT8 files (ONNX Runtime's quantizer with the attention
in INT8 on ONNX Runtime and OpenVINO; NNCF's placement inside vitdeploy on OpenVINO) and the
peer (NNCF PTQ of the same FP32 export, `benchmarks/scale.py` writes it) on OpenVINO. Also
prints each file's mean absolute logit difference from FP32, against the spread of the FP32
logits (their mean standard deviation across classes), since near-tied logits flip on rounding.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vitdeploy.core.progress import console
from vitdeploy.data.datasets import DataStore, preprocess
from vitdeploy.recipe.schema import load_recipe

ROOT = Path(__file__).resolve().parents[1]
BATCH = 8


def onnxruntime_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def openvino_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    from vitdeploy.runtime.backends.openvino import batch_predictor, compile_model

    return batch_predictor(compile_model(path, None, None))


def logits(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, pre, size: int) -> np.ndarray:
    return np.concatenate([run(preprocess(images[i : i + BATCH], pre, size)) for i in range(0, len(images), BATCH)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_b16")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--also", nargs="*", default=[], help="more INT8 files, each FILE@onnxruntime or FILE@openvino")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    recipe = load_recipe(ROOT / "recipes" / "scale" / f"{args.model}_int8_portable.yaml")
    out, pre = recipe.output.dir, recipe.data.preprocess
    test = DataStore().load("cifar10", "test").subset(args.images, seed=3)
    rows = [
        ("FP32 export, ONNX Runtime", out / f"{args.model}_int8_portable.fp32.onnx", onnxruntime_runner),
        ("vitdeploy INT8, attention in INT8, ONNX Runtime", out / f"{args.model}_int8_portable.onnx", onnxruntime_runner),
        ("vitdeploy INT8, attention in INT8, OpenVINO", out / f"{args.model}_int8_portable.onnx", openvino_runner),
        ("vitdeploy INT8 by NNCF (quantize.backend nncf), OpenVINO", out / f"{args.model}_int8_nncf.onnx", openvino_runner),
        ("NNCF PTQ -> OpenVINO (peer)", out / f"{args.model}_nncf_ptq.onnx", openvino_runner),
    ]
    runners = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner}
    for entry in args.also:
        file, _, runtime = entry.rpartition("@")
        rows.append((f"{Path(file).name}, {runtime}", Path(file), runners[runtime]))
    reference = None
    report = []
    for label, path, runner in rows:
        if not path.is_file():
            console.print(f"{label}: {path} not built; skipped")
            continue
        scores = logits(runner(path), test.images, pre, 224)
        reference = scores if reference is None else reference
        row = {
            "row": label,
            "file": path.name,
            "agreement_with_fp32": float((scores.argmax(1) == reference.argmax(1)).mean()),
            "top1_vs_labels": float((scores.argmax(1) == test.labels).mean()),
            "mean_abs_logit_diff": float(np.abs(scores - reference).mean()),
            "fp32_logit_spread": float(reference.std(axis=1).mean()),
        }
        report.append(row)
        console.print(json.dumps(row))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"images": args.images, "rows": report}, indent=2))


if __name__ == "__main__":
    main()
