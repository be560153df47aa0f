"""Collections: CIFAR-10 through torchvision, or any folder of images.

A collection is held in memory as row-aligned arrays: row i of `pixels` is item i,
`labels[i]` its class (-1 where unknown) and `paths[i]` its file (None for CIFAR-10,
whose items live inside an archive). Everything downstream keeps that row order.
"""
from __future__ import annotations

import http.client
import os
import socket
import ssl
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .images import ImageError, to_pixels

DATA_DIR = Path(os.environ.get("IMGSEARCH_DATA_DIR", "data"))  # downloads and built artifacts


class CollectionError(RuntimeError):
    """A collection that cannot be loaded; the message says what to do instead."""


def label_name(classes: list[str], label) -> str | None:
    """A stored label (an index into `classes`, -1 for none) as its class name, or None."""
    label = int(label)
    return classes[label] if label >= 0 else None


@dataclass
class Collection:
    spec: str  # how to load it again: "cifar10", "cifar10:test" or a folder path
    pixels: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # (N,) int64, -1 where the item has no class
    classes: list[str]  # labels index into this; empty for a flat folder
    paths: list[str | None]  # the item's own file, or None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why) not loaded

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def has_labels(self) -> bool:
        return bool(self.classes) and bool((self.labels >= 0).any())

    def label_name(self, i: int) -> str | None:
        return label_name(self.classes, self.labels[i])

    def subset(self, n: int, seed: int = 0) -> "Collection":
        """A random subset of n items (in their original order), for quick runs."""
        if n >= len(self):
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return Collection(self.spec, self.pixels[rows], self.labels[rows], self.classes,
                          [self.paths[i] for i in rows], self.skipped)


def load_collection(spec: str = "cifar10", *, progress: bool = True) -> Collection:
    """"cifar10" / "cifar10:train" / "cifar10:test", or a folder of images."""
    if spec.startswith("cifar10") and not Path(spec).exists():
        split = spec.partition(":")[2] or "train"
        if split not in ("train", "test"):
            raise CollectionError(f"Unknown CIFAR-10 split {split!r}: use cifar10:train or cifar10:test.")
        return load_cifar10(split)
    return load_folder(spec, progress=progress)


def load_cifar10(split: str = "train", root: str | os.PathLike = DATA_DIR) -> Collection:
    """The real CIFAR-10, downloaded by torchvision into `root` the first time."""
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(root=str(root), train=(split == "train"), download=True)
    except Exception as e:
        raise CollectionError(_cifar10_failure(e, root)) from None
    spec = "cifar10" if split == "train" else "cifar10:test"
    labels = np.asarray(ds.targets, dtype=np.int64)
    return Collection(spec, np.ascontiguousarray(ds.data), labels, list(ds.classes), [None] * len(labels))


# What a missing or broken network raises on the way through urllib and torchvision.
_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, socket.gaierror,
                   http.client.HTTPException, ssl.SSLError)


def _cifar10_failure(e: Exception, root) -> str:
    """One sentence naming the real cause: only a failed download means "no network"."""
    # torchvision reports a download cut short as a file "not found or corrupted"
    if isinstance(e, _NETWORK_ERRORS) or (isinstance(e, RuntimeError) and "corrupted" in str(e)):
        return (f"CIFAR-10 could not be downloaded into {root}/ ({type(e).__name__}); without a network, "
                f"point --data at a local folder of images instead.")
    if isinstance(e, OSError):  # disk full, no permission, read-only file system, ...
        return (f"CIFAR-10 could not be stored in {root}/ ({e.strerror or e}); free some space there, or set "
                f"IMGSEARCH_DATA_DIR to a writable folder with 350 MB free.")
    detail = str(e).split("\n")[0].rstrip(".")
    return f"CIFAR-10 could not be loaded from {root}/ ({type(e).__name__}{': ' + detail if detail else ''})."


@dataclass
class FolderListing:
    """The files of a folder, row-aligned: what a build reads and what `load_folder` decodes."""
    root: str  # the folder, resolved: what meta.json calls the collection
    paths: list[str]  # every file under root except hidden ones, in sorted walk order
    stats: np.ndarray  # (n, 2) int64: size and modification time (ns), which tell `--update` what changed
    labels: np.ndarray  # (n,) int64: index into `classes` of the file's first subfolder, -1 at the top level
    classes: list[str]  # the first-level subfolders holding files, sorted
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why) for names that could not be read


def list_folder(root: str | os.PathLike) -> FolderListing:
    """Every file under `root` (hidden ones excepted), sorted; the first subfolder under root names the class.

    Only names and sizes are read: whether a file is an image is learnt when it is decoded.
    """
    root = Path(root)
    if not root.is_dir():
        raise CollectionError(f"{root} is not a folder; use --data cifar10 or a folder of images.")
    base = str(root.resolve())
    paths, stats, tops, skipped = [], [], [], []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, base)
        top = None if rel == "." else rel.split(os.sep)[0]
        for name in sorted(f for f in filenames if not f.startswith(".")):
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError as e:  # a broken link, a loop of links, a file gone since the folder was listed
                skipped.append((path, f"{name} could not be read ({e.strerror or type(e).__name__})."))
                continue
            paths.append(path)
            stats.append((st.st_size, st.st_mtime_ns))
            tops.append(top)
    classes = sorted({t for t in tops if t is not None})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[t] if t is not None else -1 for t in tops], dtype=np.int64)
    return FolderListing(base, paths, np.array(stats, dtype=np.int64).reshape(-1, 2), labels, classes, skipped)


SKIPPED_SHOWN = 20  # skipped files a build names in meta.json (the page's sidebar lists them); all are counted


def relative_name(path: str | None, root: str | None) -> str | None:
    """A file's path relative to `root` when it lies under it, else only its name; None for no file."""
    if path is None:
        return None
    if root and path.startswith(root.rstrip(os.sep) + os.sep):
        return path[len(root.rstrip(os.sep)) + 1:]
    return os.path.basename(path)


def skip_reason(path: str, why: str) -> str:
    """Why a file was skipped, without its name: "is not an image format this tool can read." and the like."""
    name = os.path.basename(path)
    return why[len(name):].strip() if why.startswith(name) else why.replace(path, "").strip()


def skipped_summary(skipped: list[tuple[str, str]], root: str | None) -> dict:
    """How many files were skipped for each reason, and the first SKIPPED_SHOWN by name (relative to the root)."""
    reasons: dict[str, int] = {}
    for path, why in skipped:
        reason = skip_reason(path, why)
        reasons[reason] = reasons.get(reason, 0) + 1
    return {"reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
            "first": [[relative_name(path, root), skip_reason(path, why)] for path, why in skipped[:SKIPPED_SHOWN]]}


def load_folder(root: str | os.PathLike, *, progress: bool = True) -> Collection:
    """Every readable image under `root` (see `list_folder`), decoded into memory.

    Unreadable and non-image files are skipped and listed in `skipped`: one bad file
    never aborts a large build.
    """
    listing = list_folder(root)
    pixels, labels, paths, skipped = [], [], [], []
    for path, label in tqdm(list(zip(listing.paths, listing.labels)), desc=f"reading {Path(root).name or root}",
                            unit="img", disable=not progress, mininterval=0.5):
        try:
            pixels.append(to_pixels(path))
        except ImageError as e:
            skipped.append((path, str(e)))
            continue
        labels.append(label)
        paths.append(path)
    if not pixels:
        raise CollectionError(f"{root} holds no readable images ({len(skipped)} files skipped).")
    return Collection(listing.root, np.stack(pixels), np.asarray(labels, dtype=np.int64), listing.classes,
                      paths, skipped)
