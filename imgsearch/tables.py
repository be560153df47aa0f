"""Per-item tables written to disk block by block: at a million items a table is a gigabyte, and a
build must not hold one whole to save it (issue 11: the build's memory stays flat as the collection
grows). Both writers produce what numpy itself writes (`np.save`, `np.savez`), so `np.load` and
`spaces.base.load_npz` read them, the latter memory-mapping the uncompressed members."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

BLOCK_ROWS = 4096  # rows of a table computed and written at once: 100 MB of pixels as float64, at any size


class NpyWriter:
    """An .npy file written row block by row block, its final shape known up front: nothing is held in
    memory, and no page of it is mapped into the writer (a memory map's written pages count as the
    process's resident memory until they are flushed). `target` is a path or an open binary file."""

    def __init__(self, target: Path | BinaryIO, shape: tuple, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.owns_file = isinstance(target, (str, Path))
        self.f = open(target, "wb") if self.owns_file else target
        self.name = Path(target).name if self.owns_file else getattr(target, "name", "table")
        np.lib.format.write_array_header_1_0(self.f, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": self.shape})
        self.rows = 0

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        assert block.shape[1:] == self.shape[1:], (block.shape, self.shape)
        self.f.write(block.data)
        self.rows += len(block)

    def close(self) -> None:
        if self.owns_file:
            self.f.close()
        assert self.rows == self.shape[0], f"{self.name}: {self.rows} rows written, {self.shape[0]} declared"


class NpzWriter:
    """An .npz file as np.savez writes it (each member an uncompressed .npy), member by member; a
    per-item table goes in block by block (`add_rows`), so only one block of it is ever in memory."""

    def __init__(self, path: Path):
        self.zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def __enter__(self) -> "NpzWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.zip.close()

    def add(self, name: str, array) -> None:
        with self.zip.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)

    def add_rows(self, name: str, shape: tuple, dtype, blocks: Iterable[np.ndarray]) -> None:
        with self.zip.open(f"{name}.npy", "w", force_zip64=True) as f:  # a table may pass 4 GB
            writer = NpyWriter(f, shape, dtype)
            for block in blocks:
                writer.write(block)
            writer.close()
