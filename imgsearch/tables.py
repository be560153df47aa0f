"""Per-item tables written to disk block by block: at a million items a table is a gigabyte, and a
build must not hold one whole to save it (the build's memory stays flat as the collection
grows). Both writers produce what numpy itself writes (`np.save`, `np.savez`), so `np.load` and
`spaces.base.load_npz` read them, the latter memory-mapping the uncompressed members.

Read back through memory maps, the same tables would stay mapped, and counted as the build's own
memory, once read: `row_blocks` and `gather` read them a block or a few rows at a time and `let_go`
of what they read."""
from __future__ import annotations

import mmap
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np

BLOCK_ROWS = 4096  # rows of a table computed and written at once: 100 MB of pixels as float64, at any size
# Rows of pixels turned into floats at once by a pass that projects them: 3 MB as float32 and 6 MB as
# float64, which stay near the cores. Projections of 4,096 or 8,192 rows at once (100 MB each) took
# ~1.5x as long, with the same results bit for bit (docs/speed.md).
CACHE_ROWS = 256
GATHER_ROWS = 32  # scattered rows read between two let_go calls: at most a few dozen folios mapped at once


def _read_only_map(a: np.ndarray) -> mmap.mmap | None:
    """The read-only file map an array's memory belongs to, if any (a view's .base leads to it)."""
    while isinstance(a, np.ndarray):
        a = a.base
    if isinstance(a, mmap.mmap):
        with memoryview(a) as view:
            if view.readonly:
                return a
    return None


def let_go(*arrays: np.ndarray) -> None:
    """Drop the pages that read-only memory-mapped arrays span from this process's resident memory.

    A page of a mapped file that the process has read stays mapped, and counted as its own (VmRSS,
    and the OOM killer's score), until the mapping closes: one pass over a million items' pixels
    would leave the build holding 3 GB. Dropped pages stay in the page cache, so reading them again
    costs a page fault, not a disk read, and the array's contents never change. Only the array's own
    bytes are let go (a view of one row lets go of that row's pages, not the table's). Arrays that
    are not read-only file maps (in memory, or copy-on-write, whose pages would be lost) are left alone."""
    for a in arrays:
        source = _read_only_map(a)
        if source is None or a.size == 0:
            continue
        map_start = np.frombuffer(source, dtype=np.uint8).ctypes.data
        first = a.ctypes.data + sum(st * (n - 1) for st, n in zip(a.strides, a.shape) if st < 0) - map_start
        last = a.ctypes.data + sum(st * (n - 1) for st, n in zip(a.strides, a.shape) if st > 0) + a.itemsize - map_start
        first -= first % mmap.PAGESIZE  # whole pages: a neighbour's share of one is read again from the cache
        source.madvise(mmap.MADV_DONTNEED, first, min(last, len(source)) - first)


def gather(table: np.ndarray, rows: np.ndarray, group: int = GATHER_ROWS) -> np.ndarray:
    """table[rows] for rows scattered over a memory-mapped table (a seeded sample), letting go of the
    pages every `group` rows. A fault maps the whole page-cache folio around the row it reads, up to
    megabytes on a recent kernel, so the 20,000 rows of a sample would otherwise leave most of a
    3 GB table mapped (1.4 GB measured at a million items)."""
    rows = np.asarray(rows, dtype=np.int64)
    if _read_only_map(table) is None:
        return table[rows]
    out = np.empty((len(rows), *table.shape[1:]), dtype=table.dtype)
    for s in range(0, len(rows), group):
        part = rows[s:s + group]
        out[s:s + len(part)] = table[part]
        let_go(table)  # the whole table: the folios around the first and last row reach past them
    return out


def row_blocks(table: np.ndarray, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, block) for consecutive blocks of `rows` (default BLOCK_ROWS) rows of a table. A
    memory-mapped table's pages are let go after each block, so a pass holds one block, not the file.

    After each block, everything read so far is let go, not just the block: a fault maps the whole
    folio around the page it reads, up to megabytes, so reading one block maps back pages of blocks
    already let go (a 12 MB table read in 768 KB blocks was left with 0.8-1.8 MB mapped; none now).
    Only this table's (or view's) own rows: a query's one row never drops a store's other pages."""
    rows = rows or BLOCK_ROWS  # read when called: tests shrink BLOCK_ROWS to see blocks on small data
    for s in range(0, len(table), rows):
        block = table[s:s + rows]
        yield s, block
        let_go(table[:s + rows])


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
        if block.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.name}: a block of rows shaped {block.shape[1:]} into rows shaped {self.shape[1:]}")
        self.f.write(block.data)
        self.rows += len(block)

    def close(self) -> None:
        if self.owns_file:
            self.f.close()
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.name}: {self.rows} rows written, {self.shape[0]} declared")


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
