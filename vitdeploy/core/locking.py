"""One build of a recipe at a time: an exclusive lock per artifact, with its holder named.

The lock is the kernel's (`flock` on a file in the work folder), so a holder that dies in any
way, `kill -9` included, releases it at once: there is no stale lock to break by hand, and no
timeout to guess. The file also records who holds it (pid, start time, command), which is what
a waiting build prints; a holder that ends removes it, so a file left with a dead pid tells the
next holder it took over from a killed build. Taking and releasing the lock costs about 0.1 ms.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from vitdeploy.core.errors import UserError
from vitdeploy.core.storage import writable_folder


class LockBusy(UserError):
    """Another process holds the lock and the caller chose not to wait."""


@dataclass(frozen=True)
class Holder:
    pid: int
    started: str  # ISO time, UTC
    command: str

    @classmethod
    def me(cls) -> Holder:
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        return cls(os.getpid(), now, " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]))

    @classmethod
    def read(cls, text: str) -> Holder | None:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None  # empty (released cleanly) or written by something else

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process
            return True
        return True

    def describe(self) -> str:
        return f"pid {self.pid} (`{self.command}`, started {self.started})"


@contextlib.contextmanager
def exclusive(path: Path, what: str, *, wait: bool = True, say: Callable[[str], None] = print) -> Iterator[Holder | None]:
    """Hold the lock at `path` for the block; yields the killed holder it took over from, if any.

    `wait` False: raise `LockBusy` (exit 2) at once when another process holds it. `what`
    names the locked thing in messages ("a build of vit_static_int8"). The file, and the
    folders made for it, are removed on release, so a refused build leaves nothing behind.
    """
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # deepest first
    f = _acquire(path, what, wait, say)
    try:
        previous = _holder(f)
        killed = previous if previous is not None and previous.pid != os.getpid() and not previous.alive() else None
        _record(f, Holder.me())
        yield killed
    finally:
        path.unlink(missing_ok=True)  # before unlocking: a waiter then sees a stale file and retries
        f.close()  # releases the lock
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty: the build wrote there, or another build is starting
                break


def _acquire(path: Path, what: str, wait: bool, say: Callable[[str], None]) -> IO[str]:
    """The locked, open lock file: the one at `path` now (a releasing holder removes its file,
    so a lock won on a removed file is retried)."""
    said = False
    while True:
        writable_folder(path.parent)
        try:
            f = path.open("a+")
        except FileNotFoundError:  # its folder removed by a releasing holder just now
            continue
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(f)
            by = holder.describe() if holder else "another process"
            if not wait:
                f.close()
                raise LockBusy(f"{what} is running in {by}; wait for it, or leave out --no-wait to queue") from None
            if not said:
                say(f"waiting for {what} in {by} to finish")
                said = True
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(f.fileno()).st_ino:
            return f
        f.close()


def _holder(f) -> Holder | None:
    f.seek(0)
    return Holder.read(f.read())


def _record(f, holder: Holder) -> None:
    f.seek(0)
    f.truncate(0)
    f.write(json.dumps(asdict(holder)))
    f.flush()
