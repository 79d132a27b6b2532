"""Writes `vitdeploy/recipe/known_names.json` from the installed timm and ONNX Runtime:
`python -m vitdeploy.pipeline.known_names`."""

from __future__ import annotations

import json

from vitdeploy.recipe.known_names import LIST_FILE


def current_names() -> dict[str, object]:
    import onnxruntime
    import timm
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    from vitdeploy.torch.models import vit_model_names

    return {
        "generated_with": {"timm": timm.__version__, "onnxruntime": onnxruntime.__version__},
        "vit_models": sorted(vit_model_names()),
        "quantizable_op_types": sorted(set(IntegerOpsRegistry) | set(QDQRegistry) | set(QLinearOpsRegistry)),
    }


if __name__ == "__main__":
    LIST_FILE.write_text(json.dumps(current_names(), indent=1) + "\n")
    print(f"wrote {LIST_FILE}")
