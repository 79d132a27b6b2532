"""`vitdeploy predict` on a 64-bit Arm CPU (aarch64) under emulation, compared with x86-64.

The device side needs onnxruntime, numpy, pillow (simplejpeg where a wheel exists), typer and
rich: this script installs exactly those, as aarch64 wheels, into a folder beside a minimal
Debian aarch64 root, runs the same bundle on the same images there through Debian's
`qemu-aarch64-static` (no binfmt registration needed: the loader is given the root with -L),
and compares every image's top-1 label and probabilities with this machine's run.

    apt-get install qemu-user-static debootstrap
    python benchmarks/aarch64_predict.py artifacts/deit_int8.tar.gz --images 250

Emulation checks correctness, not speed. Debian 12's qemu-user (7.2) stops with a segmentation
fault while importing onnxruntime 1.32's aarch64 wheel, under every emulated CPU model tried;
qemu 10 (bookworm-backports' `qemu-user`, its `qemu-aarch64` is static) runs it: pass that
binary as --qemu. With Debian 12's own qemu, --onnxruntime 1.22.1 runs. The root and the wheels are made once (minutes) and
reused. Test images come from the CIFAR-10 archive in ../shared/data unless --folder is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
DEVICE_PACKAGES = ["numpy", "pillow", "simplejpeg", "typer", "rich"]  # and onnxruntime, at --onnxruntime
QEMU = "qemu-aarch64-static"


def debian_root(where: Path) -> Path:
    """A minimal Debian bookworm aarch64 root with Python 3.11, unpacked without running it."""
    python = where / "usr" / "bin" / "python3.11"
    if python.is_file():
        return where
    if not shutil.which("debootstrap") or not shutil.which(QEMU):
        sys.exit("needs Debian's debootstrap and qemu-user-static: apt-get install qemu-user-static debootstrap")
    first_stage = ["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", "--include=python3.11"]
    subprocess.run([*first_stage, "bookworm", str(where)], check=True)
    for deb in sorted((where / "var" / "cache" / "apt" / "archives").glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(where)], check=True)
    return where


def device_site(where: Path, onnxruntime: str) -> Path:
    """The device-side packages as aarch64 wheels for CPython 3.11, installed into `where`."""
    if (where / "onnxruntime").is_dir():
        return where
    platforms = ["manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64"]
    wheels = ["--python-version", "3.11", "--implementation", "cp", "--only-binary=:all:"]
    wheels += [a for p in platforms for a in ("--platform", p)]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--target",
        str(where),
        *wheels,
        *DEVICE_PACKAGES,
        f"onnxruntime=={onnxruntime}",
    ]
    subprocess.run(cmd, check=True)
    return where


def sample_images(count: int, into: Path) -> Path:
    """`count` CIFAR-10 test images, spread over the classes, as an ImageFolder."""
    per_class = -(-count // 10)
    taken: dict[str, int] = {}
    with tarfile.open(ARCHIVE) as tf:
        for member in tf:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 4 or parts[-3] != "test":
                continue
            label = parts[-2]
            if taken.get(label, 0) >= per_class:
                continue
            taken[label] = taken.get(label, 0) + 1
            target = into / label / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tf.extractfile(member).read())
            if sum(taken.values()) >= count:
                break
    return into


def predictions(command: list[str], env: dict[str, str]) -> dict[str, dict]:
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:3])}…: exit {done.returncode}\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {Path(r["path"]).name + "@" + Path(r["path"]).parent.name: r for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--folder", type=Path, help="images to classify (default: CIFAR-10 test images)")
    ap.add_argument("--images", type=int, default=250)
    ap.add_argument("--onnxruntime", default="1.32.0", help="onnxruntime release on the emulated device")
    ap.add_argument("--qemu", default=QEMU, help="the static qemu-aarch64 binary")
    ap.add_argument("--work", type=Path, default=Path("/opt/vitdeploy-aarch64"), help="where the root and wheels are kept")
    args = ap.parse_args()
    root = debian_root(args.work / "root")
    site = device_site(args.work / f"site-ort{args.onnxruntime}", args.onnxruntime)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or sample_images(args.images, Path(tmp) / "images")
        predict = ["-m", "vitdeploy.cli", "predict", str(args.bundle.resolve()), str(folder), "--json", "--top-k", "3"]
        native = predictions([sys.executable, *predict], os.environ.copy())
        env = {"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin", "HOME": tmp, "PYTHONNOUSERSITE": "1"}
        arm = predictions([args.qemu, "-L", str(root), str(root / "usr" / "bin" / "python3.11"), *predict], env)
    common = sorted(set(native) & set(arm))
    agree = sum(native[k]["top"][0]["label"] == arm[k]["top"][0]["label"] for k in common)
    pairs = [(a, b) for k in common for a, b in zip(native[k]["top"], arm[k]["top"], strict=True) if a["label"] == b["label"]]
    diff = max(abs(a["probability"] - b["probability"]) for a, b in pairs)
    machine = subprocess.run([args.qemu, "-L", str(root), str(root / "usr" / "bin" / "python3.11"), "-c",
                              "import platform, onnxruntime; print(platform.machine(), onnxruntime.__version__)"],
                             capture_output=True, text=True, env=env).stdout.strip()  # fmt: skip
    print(f"aarch64 ({machine}) vs x86-64: {len(common)} images, top-1 agreement {agree / len(common):.2%} "
          f"({agree}/{len(common)}), max |probability difference| {diff:.2e}")  # fmt: skip
    if len(common) < len(native):
        print(f"warning: {len(native) - len(common)} images predicted on x86-64 only")


if __name__ == "__main__":
    main()
