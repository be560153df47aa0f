"""Search a built index in every space it holds: pixels, PCA, the float code, the bits.

    index = Index.load("data/index")
    results = index.search("photo.jpg", k=10, spaces=["pixel", "code", "bits"])  # or an image, bytes, an item id
    for hit in results.hits["bits"]: print(hit.id, hit.distance, hit.label, hit.path)
    index.thumbnail(hit.id)                        # (32, 32, 3) uint8
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import layout
from .data import label_name
from .duplicates import DEFAULT_SPACE, Duplicates, find_duplicates
from .images import PREPROCESSING, to_pixels
from .index import DEFAULT_INDEX, IndexLoadError, read_meta, resolve, verify_checksums
from .model import CheckpointError, encode_pixels, load_checkpoint, reconstruct
from .spaces import DEFAULT_SPACES, SPACES, LoadInput, Query, Space, SpaceError, SpaceUnavailable


@dataclass
class Hit:
    id: int  # row in every per-item file, and the Annoy id
    distance: float  # in the space's own unit: Euclidean on [0, 1] pixels, Annoy angular, Hamming bits
    label: str | None
    path: str | None  # the item's own file; None when it has none (CIFAR-10)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Results:
    query_pixels: np.ndarray  # (32, 32, 3) uint8: what the search actually compared
    query_id: int | None  # the query's item id when it came from the collection
    hits: dict[str, list[Hit]]  # space name -> hits, nearest first, in the order the spaces were asked for
    # space name -> one sentence, for spaces whose server could not answer (their hits are empty): a
    # vector database gone since the load costs its own columns, not the whole search.
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def pixel(self) -> list[Hit]:
        return self.hits["pixel"]

    @property
    def code(self) -> list[Hit]:
        return self.hits["code"]

    def agreement(self, label: str | None) -> dict[str, int] | None:
        """How many hits in each space share the query's class; None when it has none."""
        if label is None:
            return None
        return {space: sum(h.label == label for h in hits) for space, hits in self.hits.items()}

    def to_dict(self) -> dict:
        return {space: [h.to_dict() for h in hits] for space, hits in self.hits.items()}


class Index:
    """A loaded index: the model that made it, the per-item files, and a searcher per space."""

    def __init__(self, path: Path, meta: dict, model, model_info: dict, codes: np.ndarray, pixels: np.ndarray,
                 labels: np.ndarray, paths: list, spaces: dict[str, Space]):
        self.path, self.meta, self.model, self.model_info = path, meta, model, model_info
        self.codes, self.pixels, self.labels, self.paths = codes, pixels, labels, paths
        self.spaces = spaces  # name -> loaded Space, in registry order
        self.classes: list[str] = meta["classes"]
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
        meta = read_meta(path)  # checked against its schema: every key used below is there, with its type
        n, dim = meta["items"], meta["code_dim"]
        try:
            model, info = load_checkpoint(model_path or path / layout.MODEL)
        except CheckpointError as e:
            raise IndexLoadError(str(e)) from None
        if info["fingerprint"] != meta["model"]["fingerprint"]:
            raise IndexLoadError(
                f"The index at {index_dir} was built by model {meta['model']['fingerprint']}, not by "
                f"{info['path']} ({info['fingerprint']}); rebuild the index with that model or use the index's own."
            )
        if model.args.code_dim != dim:
            raise IndexLoadError(f"The model makes {model.args.code_dim}-d codes but the index holds {dim}-d codes.")
        if meta["preprocessing"]["size"] != PREPROCESSING["size"]:
            raise IndexLoadError(f"The index was built from {meta['preprocessing']['size']}px images; "
                                 f"this version uses {PREPROCESSING['size']}px: rebuild it.")
        # Before any file is parsed: Annoy trusts its file and can crash the process on damaged bytes.
        verify_checksums(path, meta, index_dir)
        try:
            # Memory-mapped: at a million items the stores are 4 GB, shared by every process that serves them.
            codes = np.load(path / layout.CODES, mmap_mode="r")
            pixels = np.load(path / layout.PIXELS, mmap_mode="r")
            labels = np.load(path / layout.LABELS)
            paths = json.loads((path / layout.PATHS).read_text())
        except Exception as e:  # noqa: BLE001 - whatever a damaged file raises, the answer is one sentence
            raise IndexLoadError(f"A file of the index at {index_dir} is missing or corrupt ({type(e).__name__}); "
                                 "rebuild it.") from None
        for name, shape, want in ((layout.CODES, codes.shape, (n, dim)), (layout.PIXELS, pixels.shape, (n, 32, 32, 3)),
                                  (layout.LABELS, labels.shape, (n,)),
                                  (layout.PATHS, (len(paths),) if isinstance(paths, list) else (), (n,))):
            if tuple(shape) != want:
                raise IndexLoadError(f"{name} in {index_dir} has shape {tuple(shape)}, meta.json says {want}: rebuild it.")
        for name, array, kind in ((layout.CODES, codes, "f"), (layout.PIXELS, pixels, "u"), (layout.LABELS, labels, "i")):
            if array.dtype.kind != kind:
                raise IndexLoadError(f"{name} in {index_dir} holds {array.dtype} values: rebuild it.")
        if n and not -1 <= int(labels.min()) <= int(labels.max()) < len(meta["classes"]):
            raise IndexLoadError(f"{layout.LABELS} in {index_dir} has labels outside the {len(meta['classes'])} "
                                 "classes meta.json names: rebuild it.")
        if not all(p is None or isinstance(p, str) for p in paths):
            raise IndexLoadError(f"{layout.PATHS} in {index_dir} holds entries that are neither a path nor null: rebuild it.")
        shared = LoadInput(path, n, pixels, codes)
        spaces = {}
        for name, section in meta["spaces"].items():
            if name not in SPACES:
                continue  # a space this version does not know (a plug-in not registered here): the others still serve
            try:
                spaces[name] = SPACES[name].load(shared, section)
            except SpaceUnavailable as e:  # a server down is not a damaged index: rebuilding would not help
                raise IndexLoadError(f"The {name} space of the index at {index_dir} cannot be reached: {e}; "
                                     "try again when it is back.") from None
            except SpaceError as e:
                raise IndexLoadError(f"The {name} space of the index at {index_dir} is unusable: {e}; rebuild it.") from None
            except Exception as e:  # noqa: BLE001 - a plug-in space's loader may raise anything on odd files
                raise IndexLoadError(f"The {name} space of the index at {index_dir} is unusable ({type(e).__name__}); "
                                     "rebuild it.") from None
        index = cls(path, meta, model, info, codes, pixels, labels, paths, spaces)
        for space in ("code", "pixel"):
            name = layout.map_file(space)
            if name not in meta["checksums"]:
                continue  # built without maps (--no-maps); a map file nobody recorded is not trusted
            try:
                xy = np.load(path / name)
            except Exception as e:  # noqa: BLE001 - a damaged header raises tokenize errors, not only ValueError
                raise IndexLoadError(f"{name} in {index_dir} is unreadable ({type(e).__name__}): rebuild it.") from None
            if xy.shape != (n, 2):
                raise IndexLoadError(f"{name} in {index_dir} has shape {xy.shape}, expected {(n, 2)}: rebuild it.")
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

    def check_spaces(self, spaces) -> list[str]:
        """The requested space names, or ValueError naming the ones this index has."""
        names = list(spaces or DEFAULT_SPACES)
        missing = [s for s in names if s not in self.spaces]
        if missing:
            raise ValueError(f"This index has no {missing[0]!r} space; it has {', '.join(self.spaces)}.")
        return names

    def search(self, query, k: int = 10, *, spaces=None, exclude_self: bool = True) -> Results:
        """Top-k in each requested space (default: pixel and code). A query from the collection leaves itself out."""
        names = self.check_spaces(spaces)
        pixels, item = self.query_pixels(query)
        skip = item if exclude_self else None
        q = Query(pixels, self.encode)
        hits, unavailable = {}, {}
        for name in names:
            space = self.spaces[name]
            try:
                ids, dists = space.search(space.embed(q), k + (skip is not None))
            except SpaceUnavailable as e:
                hits[name], unavailable[name] = [], f"The {name} space cannot be reached: {e}; try again when it is back."
                continue
            hits[name] = [self.hit(int(i), float(d)) for i, d in zip(ids, dists) if i != skip][:k]
        return Results(pixels, item, hits, unavailable)

    def hit(self, i: int, distance: float) -> Hit:
        return Hit(i, distance, self.label(i), self.paths[i])

    def label(self, i: int) -> str | None:
        return label_name(self.classes, self.labels[i])

    def items_of(self, label: str) -> np.ndarray:
        """Ids of the items of one class."""
        return np.flatnonzero(self.labels == self.classes.index(label))

    def random_item(self, rng: np.random.Generator, label: str | None = None, other_than: int | None = None) -> int:
        """A random item id, of one class when `label` is given, and not `other_than` (the current query:
        "Random" should show something new) unless it is the only one there is."""
        pool = None if label is None else self.items_of(label)
        size = len(self) if pool is None else len(pool)
        while True:
            item = int(rng.integers(size)) if pool is None else int(rng.choice(pool))
            if item != other_than or size <= 1:
                return item

    def thumbnail(self, i: int) -> np.ndarray:
        return self.pixels[i]

    def duplicates(self, space: str | None = None, threshold=None, progress=None, mirror: bool = True) -> Duplicates:
        """Groups of near-duplicates within `threshold` in `space` (default: the benchmark's choice; see
        imgsearch/duplicates.py), flipped copies included unless `mirror=False`. Reads the files' headers;
        never moves or deletes a file."""
        return find_duplicates(self, space or DEFAULT_SPACE, threshold, progress, mirror)
