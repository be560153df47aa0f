"""`build-index --update`: which of the collection's files the live index already holds.

A file is unchanged when its path, size and modification time match the stored ones; its pixels
and code are carried over, and each space may carry over what it fitted (`spaces.Reuse`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import layout
from .integrity import IndexLoadError, read_meta, verify_checksums
from .publish import resolve
from .spaces import Reuse


class Previous:
    """For `--update`: the live index at `out`, and which of the collection's files it already holds.

    A file is unchanged when its path, size and modification time match the stored ones; its
    pixels and code are reused. Everything else in the folder is new (or changed) and encoded.
    """

    def __init__(self, directory: Path, meta: dict, kept_old: np.ndarray, kept_rows: np.ndarray,
                 new_rows: np.ndarray, changed: int, removed: int):
        self.directory, self.meta = directory, meta
        self.kept_old, self.kept_rows, self.new_rows = kept_old, kept_rows, new_rows  # old ids; source rows
        self.changed, self.removed = changed, removed

    @classmethod
    def of(cls, out: Path, source, info: dict) -> "Previous":
        if source.pixels is not None:
            raise IndexLoadError("--update needs a folder of images (it compares files by path, size and "
                                 "modification time); CIFAR-10 from torchvision is built whole.")
        directory = resolve(out)
        meta = read_meta(directory)
        if meta["collection"] != source.spec:
            raise IndexLoadError(f"The index at {out} was built from {meta['collection']}, not {source.spec}; "
                                 "build it without --update.")
        if meta["model"]["fingerprint"] != info["fingerprint"]:
            raise IndexLoadError(f"The index at {out} was built by model {meta['model']['fingerprint']}, not "
                                 f"{info['fingerprint']}; its codes cannot be reused: build it without --update.")
        if layout.FILE_STATS not in meta["checksums"]:
            raise IndexLoadError(f"The index at {out} records no file sizes and times (it was built by an earlier "
                                 "version); build it once without --update.")
        verify_checksums(directory, meta, out, names=(layout.CODES, layout.PIXELS, layout.PATHS, layout.FILE_STATS))
        old_paths = json.loads((directory / layout.PATHS).read_text())
        old_stats = np.load(directory / layout.FILE_STATS)
        where = {p: i for i, p in enumerate(old_paths) if p is not None}
        kept_old, kept_rows, new_rows, changed = [], [], [], 0
        for row, (path, stat) in enumerate(zip(source.paths, source.stats)):
            old = where.get(path)
            if old is not None and (old_stats[old] == stat).all():
                kept_old.append(old)
                kept_rows.append(row)
            else:
                new_rows.append(row)
                changed += old is not None
        removed = len(old_paths) - len(kept_old) - changed
        as_ids = lambda x: np.asarray(x, dtype=np.int64)
        return cls(directory, meta, as_ids(kept_old), as_ids(kept_rows), as_ids(new_rows), changed, removed)

    def reuse(self) -> Reuse:
        """What the spaces may carry over from the previous build; each file is checksummed before it is read."""
        return Reuse(self.directory, self.meta, self.kept_old,
                     check=lambda name: verify_checksums(self.directory, self.meta, names=(name,)))

    def checksum_of(self, path: Path) -> dict | None:
        """The recorded checksum of a file the new build shares with the previous one (a hard link)."""
        old = self.directory / path.name
        try:
            same = old.exists() and os.path.samefile(old, path)
        except OSError:
            same = False
        return self.meta["checksums"].get(path.name) if same else None

    def summary(self, items: int) -> dict:
        return {"previous_build": self.directory.name, "unchanged": len(self.kept_old),
                "added": len(self.new_rows) - self.changed, "changed": self.changed, "removed": self.removed,
                "items": items}
