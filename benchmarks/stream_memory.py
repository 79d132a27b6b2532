"""Memory of scoring a split at 224x224: read batch by batch from the cache, or read whole.

    python benchmarks/stream_memory.py [--images 3000] [--folder /tmp/stream_photos]

Writes a folder of random 320x240 JPEGs (two classes) once, decodes it into a fresh cache at
224x224, then in two fresh processes preprocesses the test split batch by batch: once reading
the memory-mapped cache as it goes, once after reading the split whole into memory. Prints each
process's own (anonymous) resident memory and its mapped file pages at the end.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from vitdeploy.data.datasets import DataStore, preprocess
from vitdeploy.recipe.schema import Preprocess


def make_folder(root: Path, images: int) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", images // 2)):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=80)


def score(cache: Path, whole: bool) -> None:
    test = DataStore(cache).load("photos", "test")
    images = np.array(test.images) if whole else test.images
    for start in range(0, len(images), 8):
        preprocess(images[start : start + 8], Preprocess(), 224)
    lines = (line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    mb = {k: int(v.split()[0]) / 1024 for k, v in lines if k in ("RssAnon", "RssFile")}
    how = "read whole" if whole else "batch by batch"
    print(f"{how}: {len(images)} images, {images.nbytes / 2**20:.0f} MB decoded; "
          f"own memory {mb['RssAnon']:.0f} MB, mapped file pages {mb['RssFile']:.0f} MB")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "stream_photos")
    p.add_argument("--score", choices=("whole", "batches"), help=argparse.SUPPRESS)  # the child processes
    p.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.score:
        score(args.cache, args.score == "whole")
        return
    if not (args.folder / "test").is_dir():
        make_folder(args.folder, args.images)
    with tempfile.TemporaryDirectory() as cache:
        DataStore(Path(cache)).import_source("photos", args.folder, {"train", "test"}, size=224)
        for how in ("batches", "whole"):
            subprocess.run([sys.executable, __file__, "--score", how, "--cache", cache], check=True)


if __name__ == "__main__":
    main()
