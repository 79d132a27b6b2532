"""Builds that share a machine: the same recipe built at once, killed lock holders, full and
read-only disks. Each fault must end in one line (exit 2) naming the folder, with every
published file byte-identical to before and no temporary file left.

Full disks are real: trials run in a private mount namespace (`unshare -rm`, no root needed
where user namespaces are allowed) on a tmpfs sized so the build runs out of space at each of
its writes in turn. Where a full disk cannot reach a write (the space is already free again
by then), the same fault is injected at that write's rename instead.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from vitdeploy.core.locking import exclusive
from vitdeploy.core.storage import StorageError
from vitdeploy.pipeline.build import build, recipe_lock
from vitdeploy.recipe.schema import load_recipe

from .conftest import TINY_OVERRIDES

TRIALS = Path(__file__).with_name("fault_trials.py")


def recipe_file(folder: Path, name: str = "faulty", out: Path | None = None) -> Path:
    """A two-block ViT (random weights: speed, not accuracy, matters here), pruned a little so the
    build writes stage weights too, to static INT8 on few images: every write a build makes."""
    recipe = {
        "name": name,
        "model": {"name": "vit_tiny_patch16_224", "overrides": TINY_OVERRIDES},
        "data": {"dataset": "cifar10"},
        "stages": [{"stage": "prune", "ratio": 0.1, "importance": "l1"}],
        "export": {"parity_samples": 32, "min_top1_agreement": 0.9},  # near-uniform random logits
        "quantize": {"mode": "static", "calibration": {"samples": 32}, "max_accuracy_drop": 100},
        "evaluate": {"samples": 64},
        "output": {"dir": str(out or folder / "out")},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def vitdeploy(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vitdeploy.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def finished(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stderr


def published(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.is_file()}


def manifest_matches_files(out: Path, name: str) -> bool:
    manifest = json.loads((out / f"{name}.json").read_text())
    return all(
        hashlib.sha256((out / rec["file"]).read_bytes()).hexdigest() == rec["sha256"] for rec in manifest["artifacts"].values()
    )


def temporaries(out: Path) -> list[str]:
    return sorted(str(p) for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".quantize-"))


@pytest.fixture(scope="module")
def reference(cifar10: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one finished build of the fault recipe: what was published before."""
    folder = tmp_path_factory.mktemp("reference")
    path = recipe_file(folder)
    build(load_recipe(path), path, torch.device("cpu"))
    return folder / "out"


def namespaces_work() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True
    ).returncode == 0  # fmt: skip


needs_mounts = pytest.mark.skipif(not namespaces_work(), reason="needs unshare -rm and tmpfs mounts")


# ---------------------------------------------------------------- the lock


def test_a_second_build_with_no_wait_is_refused_naming_the_holder(cifar10: Path, tmp_path: Path) -> None:
    path = recipe_file(tmp_path)
    with recipe_lock(load_recipe(path)):
        code, stderr = finished(vitdeploy("build", str(path), "--no-wait"))
        clean_code, clean_stderr = finished(vitdeploy("clean", str(path), "--no-wait"))
    assert code == 2 and clean_code == 2
    assert f"pid {os.getpid()}" in stderr and "a build of faulty is running" in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert "a build of faulty is running" in clean_stderr
    assert not (tmp_path / "out" / "faulty.json").exists()


def test_a_lock_left_by_a_killed_build_is_taken_over(cifar10: Path, tmp_path: Path) -> None:
    path = recipe_file(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom vitdeploy.pipeline.build import recipe_lock\n"
         "from vitdeploy.recipe.schema import load_recipe\n"
         f"with recipe_lock(load_recipe({str(path)!r})):\n    print('held', flush=True)\n    time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # SIGKILL: no cleanup ran
    holder.wait()
    lock_file = tmp_path / "out" / ".work" / ".locks" / "faulty"
    assert json.loads(lock_file.read_text())["pid"] == holder.pid  # its record is still there
    with exclusive(lock_file, "a build of faulty", wait=False) as killed:
        assert killed is not None and killed.pid == holder.pid
    assert not lock_file.exists()  # released cleanly: nothing left


def test_waiting_build_names_the_holder_and_runs_after_it(cifar10: Path, tmp_path: Path) -> None:
    path = recipe_file(tmp_path)
    with recipe_lock(load_recipe(path)):
        waiting = vitdeploy("build", str(path))
        first = waiting.stderr.readline()  # blocks until the build has reached the lock and said so
        assert first.startswith(f"waiting for a build of faulty in pid {os.getpid()}"), first
        assert waiting.poll() is None and not (tmp_path / "out" / "faulty.json").exists()
    code, stderr = finished(waiting)
    assert code == 0, stderr[-2000:]
    assert manifest_matches_files(tmp_path / "out", "faulty")


@pytest.mark.slow
def test_four_concurrent_builds_of_one_recipe_all_succeed_with_one_consistent_artifact(cifar10: Path, tmp_path: Path) -> None:
    path = recipe_file(tmp_path)
    procs = []
    for _ in range(4):
        procs.append(vitdeploy("build", str(path), "--device", "cpu"))
        time.sleep(0.5)
    results = [finished(p) for p in procs]
    assert [code for code, _ in results] == [0, 0, 0, 0], [err[-800:] for _, err in results]
    assert sum("waiting for a build of faulty" in err for _, err in results) >= 2
    out = tmp_path / "out"
    assert manifest_matches_files(out, "faulty")
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "faulty.fp32.onnx", "faulty.json", "faulty.onnx", "faulty.safetensors"
    ]  # fmt: skip
    assert temporaries(out) == []


def test_different_recipes_build_in_parallel(cifar10: Path, tmp_path: Path) -> None:
    """Two recipes of one model at once: neither waits, and both use (or fill) the shared export."""
    paths = [recipe_file(tmp_path, name) for name in ("left", "right")]
    procs = [vitdeploy("build", str(p), "--device", "cpu", "--no-wait") for p in paths]
    results = [finished(p) for p in procs]
    assert [code for code, _ in results] == [0, 0], [err[-800:] for _, err in results]
    assert not any("waiting" in err for _, err in results)
    assert all(manifest_matches_files(tmp_path / "out", name) for name in ("left", "right"))


def test_two_imports_of_one_folder_into_one_cache_at_once_both_succeed(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for cls, colour in (("red", "red"), ("blue", "blue")):
            (tmp_path / "src" / split / cls).mkdir(parents=True)
            for i in range(20):
                Image.new("RGB", (30 + i, 40), colour).save(tmp_path / "src" / split / cls / f"{i}.png")
    args = ("data", "get", "mine", "--from", str(tmp_path / "src"), "--size", "24", "--cache-dir", str(tmp_path / "c"))
    results = [finished(p) for p in [vitdeploy(*args), vitdeploy(*args)]]
    assert [code for code, _ in results] == [0, 0], [err[-800:] for _, err in results]
    meta = json.loads((tmp_path / "c" / "datasets" / "mine" / "meta.json").read_text())
    assert meta["splits"] == {"train": 40, "test": 40} and temporaries(tmp_path / "c") == []


# ---------------------------------------------------------------- full and read-only disks


def run_trials(recipe: Path, reference: Path, mode: str, sizes_kb: list[int] | None = None) -> list[dict]:
    args = ["unshare", "-rm", sys.executable, str(TRIALS), str(recipe), str(reference), str(recipe.parent / "mnt"), mode]
    done = subprocess.run(args + [str(s) for s in sizes_kb or []], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def assert_clean_ending(trials: list[dict], folder: Path) -> None:
    """Every trial succeeded, or failed in one line naming `folder` (or a folder in it) with the
    published files unchanged; none left a temporary file."""
    for t in trials:
        assert t["ended"] in ("ok", "storage"), t
        assert t["leftovers"] == [], t
        if t["ended"] == "storage":
            assert t["published_unchanged"], t
            assert "\n" not in t["message"] and str(folder) in t["message"], t


def growing_sizes(reference: Path, step: int) -> list[int]:
    """tmpfs sizes in KiB: room for what was published before, plus `step` bytes more each time."""
    before = sum(p.stat().st_size for p in reference.iterdir() if p.is_file())
    return [(before + k * step) // 1024 for k in range(1, 40)]


@needs_mounts
@pytest.mark.slow
def test_disk_full_at_each_write_of_a_build(reference: Path, tmp_path: Path) -> None:
    sizes = growing_sizes(reference, (reference / "faulty.fp32.onnx").stat().st_size // 2)
    trials = run_trials(recipe_file(tmp_path, out=tmp_path / "mnt"), reference, "build", sizes)
    assert_clean_ending(trials, tmp_path / "mnt")
    failed_at = {t["message"].split("(writing ")[-1].split(",")[0].split(")")[0] for t in trials if t["ended"] == "storage"}
    assert len(failed_at) >= 4, failed_at  # stage weights, export, fused file, the quantizer's scratch
    assert trials[-1]["ended"] == "ok"  # and with room enough, the same build succeeds


@needs_mounts
def test_disk_full_while_packaging(reference: Path, tmp_path: Path) -> None:
    sizes = growing_sizes(reference, (reference / "faulty.onnx").stat().st_size // 4)
    trials = run_trials(recipe_file(tmp_path, out=tmp_path / "mnt"), reference, "package", sizes)
    assert_clean_ending(trials, tmp_path / "mnt")
    assert {t["ended"] for t in trials} == {"ok", "storage"}


@needs_mounts
def test_read_only_output_folder(reference: Path, tmp_path: Path) -> None:
    for mode in ("build", "package"):
        (trial,) = run_trials(recipe_file(tmp_path, out=tmp_path / "mnt"), reference, mode)
        assert trial["ended"] == "storage" and "read-only" in trial["message"] and trial["published_unchanged"]


@needs_mounts
def test_an_output_folder_without_write_permission(reference: Path, tmp_path: Path) -> None:
    """A folder owned by another user: inside `unshare -r` the root of the namespace has no
    rights over files of users it does not map, as an ordinary user has none there."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    shutil.copyfile(reference / "faulty.onnx", theirs / "faulty.onnx")
    os.chown(theirs, 65534, 65534)
    before = published(theirs)
    path = recipe_file(tmp_path, out=theirs)
    done = subprocess.run(["unshare", "-r", sys.executable, "-m", "vitdeploy.cli", "build", str(path)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"no permission to write in {theirs}" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert published(theirs) == before


@needs_mounts
def test_read_only_cache_still_builds_and_a_new_import_is_refused(cifar10: Path, tmp_path: Path) -> None:
    """A shared, read-only dataset cache serves builds; only writing to it is refused, in one line."""
    path = recipe_file(tmp_path)
    folder = tmp_path / "images" / "train" / "cat"
    folder.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (40, 30), "red").save(folder / "a.jpg")
    script = (
        f"mount --bind {cifar10} {cifar10} && mount -o remount,ro,bind {cifar10} && "
        f"{sys.executable} -m vitdeploy.cli build {path} --device cpu > /dev/null 2> {tmp_path / 'build.log'} && echo BUILT && "
        f"{sys.executable} -m vitdeploy.cli data get mine --from {tmp_path / 'images'}"
    )
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600)
    assert "BUILT" in done.stdout, (tmp_path / "build.log").read_text()[-2000:]
    assert done.returncode == 2 and "read-only" in done.stderr and len(done.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- faults injected at each rename


class Renames:
    """Counts `os.replace` calls (every atomic write and every publish step ends in one) and
    fails the `fail_at`-th with ENOSPC, as a full disk would."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls, self.fail_at, self.real = 0, fail_at, os.replace

    def __call__(self, src, dst) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.real(src, dst)


@pytest.mark.slow
def test_a_fault_at_any_rename_leaves_the_published_files_byte_identical(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns(".work"))
    path = recipe_file(tmp_path)
    before = published(out)
    counter = Renames()
    monkeypatch.setattr(os, "replace", counter)
    build(load_recipe(path), path, torch.device("cpu"), fresh=True)
    total = counter.calls
    assert total >= 8  # stage weights, export, fused file and its shared copy, INT8, stamps, publish
    shutil.rmtree(out)
    for fail_at in range(1, total + 1):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(reference, out, ignore=shutil.ignore_patterns(".work"))
        monkeypatch.setattr(os, "replace", Renames(fail_at))
        try:
            build(load_recipe(path), path, torch.device("cpu"), fresh=True)
            survived = True  # only a failed copy into the shared export cache may leave the build whole
        except StorageError as err:
            assert "no space left in" in str(err)
            survived = False
        finally:
            monkeypatch.setattr(os, "replace", counter.real)
        if survived:
            assert manifest_matches_files(out, "faulty"), f"fault at rename {fail_at} of {total}"
            continue
        assert published(out) == before, f"fault at rename {fail_at} of {total}"
        assert temporaries(out) == [], f"fault at rename {fail_at} of {total}"
