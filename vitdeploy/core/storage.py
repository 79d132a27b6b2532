"""Atomic file writes, content hashes, and what a full or read-only disk means to a user.

An interrupted or failed build must never leave a half-written artifact: everything is
written to a temporary file in the target's folder and renamed into place on success. A
write that fails for a reason of the machine (no space, a read-only or foreign folder) is
the user's to fix, so it becomes a `StorageError`: one line naming the folder, exit 2.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vitdeploy.core.errors import UserError

# errno values that describe the machine, not a bug: the user frees space or picks a folder.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


class StorageError(UserError):
    """No space, a read-only folder, or no permission to write there."""


def storage_error(err: BaseException, folder: Path, writing: str | None = None, written: int | None = None) -> StorageError:
    """The one-line message for a failed write into `folder` (`writing`: the file's name)."""
    what = f" (writing {writing}" + (f", {mb(written)} written when it failed)" if written else ")") if writing else ""
    code = storage_errno(err)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        free = free_bytes(folder)
        room = f"; {mb(free)} free there" if free is not None else ""
        return StorageError(f"no space left in {folder}{what}{room}: free some space or choose another folder")
    if code == errno.EROFS:
        return StorageError(f"{folder} is on a read-only file system{what}: choose a writable folder")
    return StorageError(f"no permission to write in {folder}{what}: choose a folder you can write to")


def storage_errno(err: BaseException) -> int | None:
    """The machine-caused errno behind `err`, if any.

    Libraries written in Rust or C++ (safetensors, say) raise their own exception types with
    the OS error only in the text, as `... (os error 28)`."""
    if isinstance(err, OSError):
        return err.errno if err.errno in STORAGE_ERRNOS else None
    found = re.search(r"\(os error (\d+)\)", str(err))
    return int(found.group(1)) if found and int(found.group(1)) in STORAGE_ERRNOS else None


def require_space(folder: Path, needed: int, what: str) -> None:
    """Refuse before a step whose writer does not report a full disk (ONNX's shape inference
    truncates its output silently; the next reader then fails with a parse error)."""
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise StorageError(f"no space left in {folder} for {what}: it needs about {mb(needed)}, {mb(free)} free there")


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def free_bytes(folder: Path) -> int | None:
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return None


@contextlib.contextmanager
def storage_faults(folder: Path, writing: str | None = None) -> Iterator[None]:
    """Turn a machine-caused write failure in the block into a `StorageError` about `folder`."""
    try:
        yield
    except Exception as err:
        if storage_errno(err) is None:
            raise
        named = getattr(err, "filename", None)
        raise storage_error(err, Path(named).parent if named and writing is None else folder, writing) from None


def writable_folder(folder: Path) -> Path:
    """Create `folder` (and its parents) or say in one line why it cannot be."""
    with storage_faults(folder):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_writable(folder: Path) -> None:
    """Fail now, in one line, if `folder` could not take a file (before minutes of work meant
    for it). Creates nothing: the test is made in its nearest existing ancestor."""
    existing = next((p for p in (folder, *folder.parents) if p.is_dir()), None)
    if existing is not None:
        with storage_faults(folder):
            tempfile.TemporaryFile(dir=existing).close()


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` if the block succeeds.

    A full or read-only disk, in the block or in the rename, raises `StorageError` naming
    `target`'s folder; the temporary file is removed whatever happens.
    """
    target = Path(target)
    folder = writable_folder(target.parent)
    with storage_faults(folder, target.name):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        # mkstemp makes 0600, and some writers (safetensors) make their own file: artifacts are
        # ordinary files, so the mode is set on whatever stands at `tmp` now.
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except Exception as err:
        if storage_errno(err) is None:
            raise
        written = tmp.stat().st_size if tmp.exists() else None
        raise storage_error(err, folder, target.name, written) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(target: Path, data: Any) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.cache
def source_digest() -> str:
    """One hash of vitdeploy's own Python sources: which code made a file. The version number
    alone does not change when the code does, and a build is only as reusable as its code."""
    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
