"""Search a built index in pixel space (exact) and in code space (Annoy).

    index = Index.load("data/index")
    results = index.search("photo.jpg", k=10)      # or a PIL image, bytes, or an item id
    for hit in results.code: print(hit.id, hit.distance, hit.label, hit.path)
    index.thumbnail(hit.id)                        # (32, 32, 3) uint8
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from annoy import AnnoyIndex

from .images import PREPROCESSING, to_pixels
from .index import DEFAULT_INDEX, IndexLoadError, read_meta, resolve
from .model import CheckpointError, encode_pixels, load_checkpoint, reconstruct


@dataclass
class Hit:
    id: int  # row in every per-item file, and the Annoy id
    distance: float  # pixel space: Euclidean on [0, 1] pixels; code space: Annoy angular, sqrt(2 - 2 cos)
    label: str | None
    path: str | None  # the item's own file; None when it has none (CIFAR-10)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Results:
    query_pixels: np.ndarray  # (32, 32, 3) uint8: what the search actually compared
    query_id: int | None  # the query's item id when it came from the collection
    pixel: list[Hit]
    code: list[Hit]

    def agreement(self, label: str | None) -> dict[str, int] | None:
        """How many hits in each space share the query's class; None when it has none."""
        if label is None:
            return None
        return {space: sum(h.label == label for h in hits) for space, hits in (("pixel", self.pixel), ("code", self.code))}

    def to_dict(self) -> dict:
        return {"pixel": [h.to_dict() for h in self.pixel], "code": [h.to_dict() for h in self.code]}


class PixelSearch:
    """Exact Euclidean search over the flattened pixels.

    The scan is memory-bound, so the database is held in float16 (half the bytes of float32),
    centred on 0.5 so the products stay small and precise: ||q - x||^2 = ||x||^2 - 2 q.x + ||q||^2
    ranks every item in one matrix-vector product. That ranking is approximate by a rounding
    error, so a generous shortlist is re-ranked on exact uint8 differences: the returned ids
    and distances are those of exact search (scripts/benchmark.py checks the agreement).
    """

    RERANK = 256  # shortlist beyond k; rounding moves d^2 by ~0.05, far less than this list spans

    def __init__(self, pixels: np.ndarray):
        self.pixels = np.asarray(pixels).reshape(len(pixels), -1)
        self.data = torch.empty(self.pixels.shape, dtype=torch.float16)
        for s in range(0, len(self.pixels), 8192):  # in chunks: no float32 copy of the whole database
            chunk = torch.from_numpy(self.pixels[s:s + 8192].astype(np.float32)).div_(255.0).sub_(0.5)
            self.data[s:s + 8192] = chunk.half()
        self.sq_norms = torch.cat([(c.float() ** 2).sum(1) for c in self.data.split(8192)])

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = q.reshape(-1)
        qv = torch.from_numpy(q.astype(np.float32) / 255.0 - 0.5).half()
        d2 = self.sq_norms - 2.0 * (self.data @ qv).float()
        shortlist = torch.topk(d2, min(k + self.RERANK, len(d2)), largest=False, sorted=False).indices.numpy()
        diff = self.pixels[shortlist].astype(np.float32) - q.astype(np.float32)
        exact = np.sqrt((diff * diff).sum(1)) / 255.0
        order = np.lexsort((shortlist, exact))[:k]  # ties broken by id, as a stable exact sort would
        return shortlist[order], exact[order]


class Index:
    """A loaded index: the model that made it, its codes, its Annoy trees and its pixels."""

    def __init__(self, path: Path, meta: dict, model, model_info: dict, codes: np.ndarray, ann: AnnoyIndex,
                 pixels: np.ndarray, labels: np.ndarray, paths: list):
        self.path, self.meta, self.model, self.model_info = path, meta, model, model_info
        self.codes, self.ann, self.pixels, self.labels, self.paths = codes, ann, pixels, labels, paths
        self.classes: list[str] = meta["classes"]
        self.search_k: int = meta["search_k"]
        self.pixel_search = PixelSearch(pixels)
        self._path_to_id = {p: i for i, p in enumerate(paths) if p}
        self.maps: dict[str, np.ndarray] = {}  # "code"/"pixel" -> (N, 2), when the build made them

    def __len__(self) -> int:
        return len(self.codes)

    @classmethod
    def load(cls, index_dir: str | os.PathLike = DEFAULT_INDEX, model_path: str | os.PathLike | None = None) -> "Index":
        """Load and cross-check every file; any mismatch raises IndexLoadError with the reason.

        `model_path` overrides the checkpoint stored in the index: it must be the same model.
        """
        path = resolve(index_dir)  # one snapshot: a rebuild swapping the link meanwhile changes nothing here
        meta = read_meta(path)
        n, dim = meta["items"], meta["code_dim"]
        try:
            model, info = load_checkpoint(model_path or path / "model.pt")
        except CheckpointError as e:
            raise IndexLoadError(str(e)) from None
        if info["fingerprint"] != meta["model"]["fingerprint"]:
            raise IndexLoadError(
                f"The index at {index_dir} was built by model {meta['model']['fingerprint']}, not by "
                f"{info['path']} ({info['fingerprint']}); rebuild the index with that model or use the index's own."
            )
        if model.args.code_dim != dim:
            raise IndexLoadError(f"The model makes {model.args.code_dim}-d codes but the index holds {dim}-d codes.")
        if meta.get("preprocessing", {}).get("size") != PREPROCESSING["size"]:
            raise IndexLoadError(f"The index was built from {meta['preprocessing'].get('size')}px images; "
                                 f"this version uses {PREPROCESSING['size']}px: rebuild it.")
        try:
            codes = np.load(path / "codes.npy")
            pixels = np.load(path / "pixels.npy")
            labels = np.load(path / "labels.npy")
            paths = json.loads((path / "paths.json").read_text())
        except (OSError, ValueError) as e:
            raise IndexLoadError(f"A file of the index at {index_dir} is missing or corrupt ({e}); rebuild it.") from None
        for name, shape, want in (("codes.npy", codes.shape, (n, dim)), ("pixels.npy", pixels.shape, (n, 32, 32, 3)),
                                  ("labels.npy", labels.shape, (n,)), ("paths.json", (len(paths),), (n,))):
            if tuple(shape) != want:
                raise IndexLoadError(f"{name} in {index_dir} has shape {tuple(shape)}, meta.json says {want}: rebuild it.")
        ann = _load_ann(path / "codes.ann", meta, codes, index_dir)
        index = cls(path, meta, model, info, codes, ann, pixels, labels, paths)
        for space in ("code", "pixel"):
            f = path / f"map_{space}.npy"
            if f.is_file():
                xy = np.load(f)
                if xy.shape != (n, 2):
                    raise IndexLoadError(f"{f.name} in {index_dir} has shape {xy.shape}, expected {(n, 2)}: rebuild it.")
                index.maps[space] = xy
        return index

    # ---- queries ---------------------------------------------------------------------------

    def query_pixels(self, query) -> tuple[np.ndarray, int | None]:
        """A query (item id, path, bytes, file-like, PIL image or 32x32x3 pixels) -> its pixels and item id."""
        if isinstance(query, np.ndarray) and query.shape == (32, 32, 3) and query.dtype == np.uint8:
            return query, None
        if isinstance(query, (int, np.integer)):
            if not 0 <= query < len(self):
                raise IndexError(f"Item {query} does not exist: the index has items 0..{len(self) - 1}.")
            return self.pixels[int(query)], int(query)
        item = None
        if isinstance(query, (str, os.PathLike)):
            item = self._path_to_id.get(str(Path(query).resolve()))
        return to_pixels(query), item

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """(32, 32, 3) or (B, 32, 32, 3) uint8 -> code(s)."""
        batch = pixels[None] if pixels.ndim == 3 else pixels
        codes = encode_pixels(self.model, batch)
        return codes[0] if pixels.ndim == 3 else codes

    def reconstruct(self, pixels: np.ndarray) -> np.ndarray:
        """What the code keeps: decode(encode(pixels)) as (32, 32, 3) uint8."""
        return reconstruct(self.model, pixels[None])[0]

    def search(self, query, k: int = 10, *, exclude_self: bool = True) -> Results:
        """Top-k in pixel space and in code space. A query from the collection leaves itself out."""
        pixels, item = self.query_pixels(query)
        skip = item if exclude_self else None
        extra = 1 if skip is not None else 0
        ids, dists = self.pixel_search.search(pixels, k + extra)
        pixel_hits = self._hits(ids, dists, skip, k)
        ids, dists = self.search_codes(self.encode(pixels), k + extra)
        code_hits = self._hits(ids, dists, skip, k)
        return Results(pixels, item, pixel_hits, code_hits)

    def search_codes(self, code: np.ndarray, k: int, search_k: int | None = None) -> tuple[list, list]:
        return self.ann.get_nns_by_vector(code, k, search_k=search_k or self.search_k, include_distances=True)

    def _hits(self, ids, dists, skip, k) -> list[Hit]:
        hits = [self.hit(int(i), float(d)) for i, d in zip(ids, dists) if i != skip]
        return hits[:k]

    def hit(self, i: int, distance: float) -> Hit:
        return Hit(i, distance, self.label(i), self.paths[i])

    def label(self, i: int) -> str | None:
        lab = int(self.labels[i])
        return self.classes[lab] if lab >= 0 else None

    def items_of(self, label: str) -> np.ndarray:
        """Ids of the items of one class."""
        return np.flatnonzero(self.labels == self.classes.index(label))

    def random_item(self, rng: np.random.Generator, label: str | None = None) -> int:
        """A random item id, of one class when `label` is given."""
        if label is None:
            return int(rng.integers(len(self)))
        return int(rng.choice(self.items_of(label)))

    def thumbnail(self, i: int) -> np.ndarray:
        return self.pixels[i]


def _load_ann(ann_path: Path, meta: dict, codes: np.ndarray, index_dir) -> AnnoyIndex:
    """Annoy trusts its file blindly (a truncated file can crash the process), so check it first."""
    if not ann_path.is_file() or ann_path.stat().st_size != meta["ann_bytes"]:
        raise IndexLoadError(f"codes.ann in {index_dir} is missing or not the size meta.json records: rebuild it.")
    ann = AnnoyIndex(meta["code_dim"], meta["metric"])
    try:
        ann.load(str(ann_path))  # memory-mapped: shared between processes, not copied
    except OSError as e:
        raise IndexLoadError(f"codes.ann in {index_dir} could not be loaded ({e}): rebuild it.") from None
    if ann.get_n_items() != meta["items"]:
        raise IndexLoadError(f"codes.ann holds {ann.get_n_items()} items, meta.json says {meta['items']}: rebuild it.")
    for i in np.linspace(0, meta["items"] - 1, num=min(8, meta["items"])).astype(int):
        stored = np.asarray(ann.get_item_vector(int(i)), dtype=np.float32)
        if not np.allclose(stored, codes[i], rtol=1e-4, atol=1e-5):
            raise IndexLoadError(f"codes.ann and codes.npy in {index_dir} disagree at item {i}: rebuild the index.")
    return ann
