"""The input contract: one typed record read from every place it travels."""

from __future__ import annotations

import pytest

from vitdeploy.core.contract import InputContract
from vitdeploy.core.errors import UserError

MANIFEST = {"input_name": "pixel_values", "layout": "NCHW", "img_size": 32, "scale": "1/255", "mean": [0.5, 0.4, 0.3],
            "std": [0.2, 0.2, 0.2], "interpolation": "bilinear", "classes": ["cat", "dog"]}  # fmt: skip


def test_manifest_and_bundle_spellings_read_to_the_same_contract() -> None:
    from_manifest = InputContract.from_record(MANIFEST, "manifest")
    assert from_manifest.size == 32 and from_manifest.classes == ("cat", "dog") and from_manifest.interpolation == "bilinear"
    from_bundle = InputContract.from_record(from_manifest.bundle_record(), "preprocess.json")
    assert from_bundle == InputContract(32, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), "bilinear")
    assert from_manifest.manifest_record() == MANIFEST  # written back exactly as read: artifacts rebuild byte for byte


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 3}, "input contract version 3 is newer"),
        ({"img_size": None}, "size are required"),
        ({"mean": [0.5, 0.5]}, "3 values each"),
        ({"std": [0.2, 0.0, 0.2]}, "std > 0"),
    ],
)
def test_a_record_that_cannot_be_honoured_is_refused_naming_where_it_came_from(change: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        InputContract.from_record(MANIFEST | change, "b.tar.gz: preprocess.json")
    assert str(err.value).startswith("b.tar.gz: preprocess.json:")


def test_a_build_manifest_reads_typed_and_names_the_artifact_roles() -> None:
    from vitdeploy.core.contract import BuildManifest

    artifacts = {"onnx": {"file": "m.onnx", "bytes": 3, "sha256": "ab"}, "fp32_onnx": {"file": "m.fp32.onnx", "sha256": "cd"}}
    evaluate = {"top1": {"onnx_fp32": 0.78, "onnx_int8": 0.77}, "split": "test", "images": 100}
    runtimes = {"openvino": {"top1": 0.76}}
    raw = {"name": "m", "preprocess": MANIFEST, "evaluate": evaluate, "artifacts": artifacts, "runtimes": runtimes}
    m = BuildManifest.from_dict(raw, "m.json")
    assert m.role_of("m.fp32.onnx")[0] == "fp32_onnx" and m.role_of("other.onnx") is None
    assert m.top1_of("onnx") == 0.77 and m.top1_of("fp32_onnx") == 0.78
    assert m.runtime_top1 == {"openvino": 0.76} and m.input.classes == ("cat", "dog")
    with pytest.raises(UserError, match=r"m.json: not a vitdeploy build manifest \(KeyError: 'artifacts'\)"):
        BuildManifest.from_dict({k: v for k, v in raw.items() if k != "artifacts"}, "m.json")
