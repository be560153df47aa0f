"""Publishing a build: the index path is a link that one atomic rename moves to a new build.

`--out data/index` is a symlink to `data/index.builds/<timestamp>-<random>/`. A rebuild writes a new
build directory and only then swaps the symlink with one atomic rename, so a reader never sees a
half-written index and a running app keeps its already-open files.

Builds into one `--out` take turns: each holds `.<out name>.lock` (next to the builds folder) from
start to publication, so a second build waits, or (`wait=False`, the page) refuses with one
sentence. Under that lock a build also removes what killed builds left behind, and old builds are
pruned once no reader can still be loading them.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from .data import DATA_DIR

DEFAULT_INDEX = DATA_DIR / "index"
PRUNE_GRACE_SECONDS = 600  # a build live (or created) this recently may still be loading in another process


class BuildBusyError(RuntimeError):
    """Another build into the same index is running (raised only when the caller chose not to wait)."""


def builds_dir(out: Path) -> Path:
    return out.parent / (out.name + ".builds")


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def build_lock(out: str | os.PathLike, *, wait: bool = True, on_wait=None):
    """Hold the build lock of `out` (an flock: the kernel releases it when its holder dies, even by SIGKILL)."""
    out = Path(out)
    builds_dir(out).mkdir(parents=True, exist_ok=True)
    # Never deleted: removing a lock file while another process waits on it would let two builds in.
    with open(lock_path(out), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if not wait:
                raise BuildBusyError(f"Another build into {out.name} is running; "
                                     "try again when it has finished.") from None
            if on_wait:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_leftovers(out: Path) -> None:
    """What killed builds left: half-written `.partial` folders and temporary links. Call under the build lock,
    which guarantees that no live build owns them."""
    builds = builds_dir(out)
    for p in builds.glob("*.partial"):
        shutil.rmtree(p, ignore_errors=True)
    for p in out.parent.glob(f".{out.name}.link-*"):
        if p.is_symlink() or p.is_file():
            p.unlink(missing_ok=True)


def publish(build_dir: Path, out: Path, keep: int = 2) -> None:
    """Point `out` at `build_dir` with one atomic rename, then prune old builds (under the build lock)."""
    with build_lock(out):
        _publish(Path(build_dir), Path(out), keep)


def _publish(build_dir: Path, out: Path, keep: int = 2) -> None:
    out = Path(out)
    previous = None
    if out.is_symlink():
        previous = resolve(out)
    elif out.exists():
        # An index directory from elsewhere: move it among the builds so `out` can become a link.
        previous = build_dir.parent / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}-moved"
        out.rename(previous)
    link_tmp = out.with_name(f".{out.name}.link-{uuid.uuid4().hex}")
    link_tmp.symlink_to(os.path.relpath(build_dir.resolve(), out.parent.resolve()))
    os.replace(link_tmp, out)
    if previous is not None and previous.is_dir():
        # Its age for pruning starts now, when readers stop being sent to it, not when it was built.
        os.utime(previous)
    prune(build_dir.parent, protect=[build_dir, previous], keep=keep)


def prune(builds: Path, protect: list, keep: int = 2, grace: float = PRUNE_GRACE_SECONDS) -> list[Path]:
    """Delete old builds; returns them. Never the protected ones (the live build and the one before it), the
    newest `keep - 2` others, or any build touched in the last `grace` seconds: a process that resolved the
    link to it just before a swap may still be loading it (Linux keeps files that are already open alive)."""
    keep_set = {Path(p).resolve() for p in protect if p is not None}
    others = [p for p in builds.iterdir()
              if p.is_dir() and not p.is_symlink() and not p.name.endswith((".partial", ".work"))
              and p.resolve() not in keep_set]
    others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    now, removed = time.time(), []
    from .spaces import milvus  # pymilvus itself is imported only when a build names Milvus collections
    for old in others[max(keep - len(keep_set), 0):]:
        if now - old.stat().st_mtime >= grace:
            # A build's Milvus collections go with it; if the server cannot drop them now, the build stays
            # (still listed here) so that the next prune tries again, instead of leaking them for good.
            why = milvus.drop_collections(old)
            if why:
                print(f"Kept {old.name}: {why}", file=sys.stderr)
                continue
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    uris = {uri for p in builds.iterdir() if p.is_dir() for uri in milvus.collections_of(p)}
    milvus.drop_orphans(builds, uris)  # collections of builds that failed after writing them
    return removed


def resolve(index_dir: str | os.PathLike = DEFAULT_INDEX) -> Path:
    """The build directory an index path points at right now (follow the symlink once)."""
    return Path(os.path.realpath(index_dir))
