"""Search a built index in every space it holds: pixels, PCA, the float code, the bits.

    index = Index.load("data/index")
    results = index.search("photo.jpg", k=10, spaces=["pixel", "code", "bits"])  # or an image, bytes, an item id
    for hit in results.hits["bits"]: print(hit.id, hit.distance, hit.label, hit.name)
    index.search("photo.jpg", max_distance=0.5, folder="2024/rome", label=["cat", "dog"])  # only these pass
    index.thumbnail(hit.id)                        # (32, 32, 3) uint8
    index.interpolate(12, "photo.jpg", steps=8)    # (8, 32, 32, 3) uint8: the decoder's images between two

Narrowed searches: the exact spaces (pixel, pca, bits; `Space.filters_exactly`) scan only the
allowed items; the approximate ones (the code space's lists or trees, Milvus) are asked for more
neighbours, a few times more each round, until k pass or `OVERFETCH_LIMIT` were looked at, and
`Results.notes` says when fewer than k passed. A distance cutoff cuts every space's list after
the search: lists come nearest first, so nothing past the cutoff could have passed.
"""
from __future__ import annotations

import io
import json
import os
import tokenize
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import layout
from .data import label_name, relative_name
from .duplicates import DEFAULT_SPACE, Duplicates, find_duplicates
from .generate import STEPS, Interpolation, interpolate
from .images import PREPROCESSING, to_pixels
from .integrity import IndexLoadError, read_meta, verify_checksums
from .publish import DEFAULT_INDEX, resolve
from .knn import BruteForce
from .model import CheckpointError, encode_pixels, load_checkpoint, reconstruct
from .previews import PIXELS_SIDE, PREVIEW_SIDE, details, enlarged, item_preview_jpeg
from .spaces import DEFAULT_SPACES, SPACES, LoadInput, Query, Space, SpaceError, SpaceUnavailable


# What numpy and json raise on a damaged file (a .npy header that does not parse raises tokenize's or the
# parser's errors, not ValueError): the answer to each is one sentence, while anything else is a bug.
DAMAGED = (OSError, ValueError, SyntaxError, EOFError, tokenize.TokenError)


@dataclass
class Hit:
    id: int  # row in every per-item file, and the Annoy id
    distance: float  # in the space's own unit: Euclidean on [0, 1] pixels, Annoy angular, Hamming bits
    label: str | None
    path: str | None  # the item's own file; None when it has none (CIFAR-10)
    name: str | None = None  # that file's path relative to the collection's root (its name when outside)

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
    # space name -> one sentence, for spaces where fewer than k results passed the cutoff and the filters
    notes: dict[str, str] = field(default_factory=dict)
    k: int = 0  # how many results per space were asked for

    def passed(self, space: str) -> int:
        """How many results of `space` passed the cutoff and the filters (at most k)."""
        return len(self.hits[space])

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
        self._stats = None  # file_stats.npy, read when a preview first needs it
        self._folder_masks: dict[tuple, np.ndarray] = {}  # folders -> which items lie in them, for repeated filters
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
        codes, pixels, labels, paths = _stores(path, meta, index_dir)
        index = cls(path, meta, model, info, codes, pixels, labels, paths,
                    _spaces(LoadInput(path, n, pixels, codes), meta, index_dir))
        index.maps = _maps(path, meta, index_dir)
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

    def search(self, query, k: int = 10, *, spaces=None, exclude_self: bool = True, max_distance=None,
               folder=None, label=None) -> Results:
        """Top-k in each requested space (default: pixel and code). A query from the collection leaves itself out.

        `max_distance`: only results closer than this, in each space's unit (a number for every space, or
        {space: number}); `folder`: only items under this path relative to the collection's root (or any of
        a list of them); `label`: only items of this class (or of any of a list). Fewer than k results are
        then normal: `Results.notes` says so per space.
        """
        names = self.check_spaces(spaces)
        cutoffs = distance_cutoffs(max_distance, names)
        allowed = self.allowed_rows(folder, label)
        pixels, item = self.query_pixels(query)
        skip = item if exclude_self else None
        q = Query(pixels, self.encode)
        hits, unavailable, notes = {}, {}, {}
        for name in names:
            space = self.spaces[name]
            try:
                ids, dists, looked = nearest(space, space.embed(q), k, skip, allowed, len(self))
            except SpaceUnavailable as e:
                hits[name], unavailable[name] = [], f"The {name} space cannot be reached: {e}; try again when it is back."
                continue
            cutoff = cutoffs.get(name)
            if cutoff is not None:
                ids, dists = ids[dists < cutoff], dists[dists < cutoff]
            hits[name] = [self.hit(int(i), float(d)) for i, d in zip(ids, dists)]
            if len(hits[name]) < k and (cutoff is not None or allowed is not None):
                notes[name] = shortfall(space, len(hits[name]), k, cutoff, allowed is not None, looked)
        return Results(pixels, item, hits, unavailable, notes, k)

    def hit(self, i: int, distance: float) -> Hit:
        return Hit(i, distance, self.label(i), self.paths[i], self.name(i))

    @property
    def root(self) -> str | None:
        """The collection's folder (absolute, as the build resolved it), or None for a collection without one."""
        spec = self.meta["collection"]
        return spec.rstrip(os.sep) or os.sep if os.path.isabs(spec) else None

    def name(self, i: int) -> str | None:
        """Item i's file relative to the collection's root (only its name when it lies elsewhere); None without a file."""
        return relative_name(self.paths[i], self.root)

    def allowed_rows(self, folder=None, label=None) -> np.ndarray | None:
        """Sorted ids of the items in any of the folders (relative to the root) and of any of the classes given;
        None when neither narrows anything. ValueError, in one sentence, for a class or folder the index lacks."""
        folders, labels = as_list(folder), as_list(label)
        if not folders and not labels:
            return None
        keep = np.ones(len(self), dtype=bool)
        if labels:
            unknown = [c for c in labels if c not in self.classes]
            if unknown:
                have = ", ".join(self.classes) if self.classes else "none"
                raise ValueError(f"This index has no class {unknown[0]!r}; its classes are: {have}.")
            keep &= np.isin(self.labels, [self.classes.index(c) for c in labels])
        if folders:
            keep &= self.in_folders(tuple(folders))
        return np.flatnonzero(keep)

    def in_folders(self, folders: tuple[str, ...]) -> np.ndarray:
        """(N,) bool: which items lie under any of `folders` (paths relative to the collection's root)."""
        if folders not in self._folder_masks:
            root = self.root
            if root is None:
                raise ValueError("This index's items have no files of their own, so there are no folders to narrow to.")
            clean = [clean_folder(f) for f in folders]
            if "" in clean:
                mask = np.array([p is not None for p in self.paths], dtype=bool)
            else:
                prefixes = tuple(os.path.join(root, f) + os.sep for f in clean)
                mask = np.fromiter((p is not None and p.startswith(prefixes) for p in self.paths), bool, len(self))
            if not mask.any():
                raise ValueError(f"The collection has no images in the folder {folders[0]!r} (a path relative to "
                                 "its root, like the names shown with the results).")
            self._folder_masks = {**dict(list(self._folder_masks.items())[-7:]), folders: mask}  # a few, not all ever asked
        return self._folder_masks[folders]

    def folders(self) -> list[str]:
        """Every folder under the collection's root that holds images (at any depth), sorted; [] without a root."""
        root = self.root
        if root is None:
            return []
        found = set()
        for i in range(len(self)):
            parent = os.path.dirname(self.name(i) or "")
            while parent and parent not in found:
                found.add(parent)
                parent = os.path.dirname(parent)
        return sorted(found)

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

    # ---- the decoder as a generator (imgsearch/generate.py) ---------------------------------

    def code_of(self, query) -> np.ndarray:
        """A query's code (anything `search` accepts): an item's stored code, else its pixels encoded."""
        pixels, item = self.query_pixels(query)
        return np.asarray(self.codes[item]) if item is not None else self.encode(pixels)

    def nearest_items(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The item nearest each code in code space, and its angular distance: the served code space's
        answer, or an exact search of the codes where the index has no code space or it cannot answer."""
        space = self.spaces.get("code")
        try:
            if space is not None:
                found = [space.search(code, 1) for code in codes]
                return np.array([ids[0] for ids, _ in found]), np.array([d[0] for _, d in found], np.float32)
        except SpaceUnavailable:
            pass
        ids, dists = BruteForce(self.codes, "angular").search(codes, 1)
        return ids[:, 0], dists[:, 0]

    def between(self, a, b, steps: int = STEPS) -> Interpolation:
        """The decoder's images on the way from a's code to b's (slerp), with the item nearest each step."""
        return interpolate(self.model, self.code_of(a), self.code_of(b), steps, self.nearest_items)

    def interpolate(self, a, b, steps: int = STEPS) -> np.ndarray:
        """(steps, 32, 32, 3) uint8: images decoded from the codes between a's and b's, both ends included."""
        return self.between(a, b, steps).pixels

    def preview_jpeg(self, i: int, side: int = PREVIEW_SIDE) -> bytes | None:
        """Item i's own file as a JPEG picture, upright, long side at most `side` (previews.py: decoded on demand,
        cached); None when it has no file the server may show (then its pixels stand for it)."""
        return item_preview_jpeg(self.paths[i], self.root, self.file_stats(i), side)

    def preview(self, i: int, side: int = PREVIEW_SIDE):
        """Item i as a person sees it, a PIL image: its file, upright, long side `side` at most, or (a file smaller
        than PIXELS_SIDE, or none it may show) its pixels enlarged crisply to at least PIXELS_SIDE (160 px)."""
        from PIL import Image

        data = self.preview_jpeg(i, side)
        if data is None:
            return enlarged(self.pixels[i])
        img = Image.open(io.BytesIO(data))
        return enlarged(img) if max(img.size) < PIXELS_SIDE else img

    def details(self, i: int) -> dict:
        """Item i for the larger view: name, class, file bytes, pixel dimensions, modification time (None: unknown)."""
        return {"name": self.name(i), "label": self.label(i), **details(self.paths[i], self.root)}

    def file_stats(self, i: int) -> tuple[int, int] | None:
        """The size and modification time (ns) item i's file had when the build read it; None when not recorded."""
        if self._stats is None:
            recorded = layout.FILE_STATS in self.meta["checksums"]
            self._stats = np.load(self.path / layout.FILE_STATS, mmap_mode="r") if recorded else False
        return None if self._stats is False else (int(self._stats[i, 0]), int(self._stats[i, 1]))


OVERFETCH_LIMIT = 10_000  # most neighbours an approximate space is asked for when a filter narrows its results
OVERFETCH_GROWTH = 4  # each further round asks for this many times more


def _stores(path: Path, meta: dict, index_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """The per-item files every space shares, checked against meta.json's item count and classes."""
    n, dim = meta["items"], meta["code_dim"]
    try:
        # Memory-mapped: at a million items the stores are 4 GB, shared by every process that serves them.
        codes = np.load(path / layout.CODES, mmap_mode="r")
        pixels = np.load(path / layout.PIXELS, mmap_mode="r")
        labels = np.load(path / layout.LABELS)
        paths = json.loads((path / layout.PATHS).read_text())
    except DAMAGED as e:
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
    return codes, pixels, labels, paths


def _spaces(shared: LoadInput, meta: dict, index_dir) -> dict[str, Space]:
    """Every space meta.json lists and this version knows, loaded; a space it does not know is left out."""
    spaces = {}
    for name, section in meta["spaces"].items():
        if name not in SPACES:
            continue  # a space this version does not know (a plug-in not registered here): the others still serve
        try:
            spaces[name] = SPACES[name].load(shared, section)
        except SpaceUnavailable as e:  # a server down is not a damaged index: rebuilding would not help
            raise IndexLoadError(f"The {name} space of the index at {index_dir} cannot be reached: {e}; "
                                 "try again when it is back.") from None
        except (SpaceError, OSError, ValueError) as e:  # its files or settings; anything else is a bug, and shows
            raise IndexLoadError(f"The {name} space of the index at {index_dir} is unusable: {e}; rebuild it.") from None
    return spaces


def _maps(path: Path, meta: dict, index_dir) -> dict[str, np.ndarray]:
    """The build's 2-D maps of code and pixel space ("code"/"pixel" -> (N, 2)); none when built without."""
    maps = {}
    for space in ("code", "pixel"):
        name = layout.map_file(space)
        if name not in meta["checksums"]:
            continue  # built without maps (--no-maps); a map file nobody recorded is not trusted
        try:
            xy = np.load(path / name)
        except DAMAGED as e:
            raise IndexLoadError(f"{name} in {index_dir} is unreadable ({type(e).__name__}): rebuild it.") from None
        if xy.shape != (meta["items"], 2):
            raise IndexLoadError(f"{name} in {index_dir} has shape {xy.shape}, expected {(meta['items'], 2)}: rebuild it.")
        maps[space] = xy
    return maps


def nearest(space: Space, vector: np.ndarray, k: int, skip: int | None, allowed: np.ndarray | None,
            items: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids, distances, how many neighbours the space was asked for) of the k nearest items other than
    `skip` among `allowed` (None: all). An exact space scans only the allowed items; an approximate
    one is asked for more, round by round, until k pass, it has no more, or OVERFETCH_LIMIT is reached."""
    want = k + (skip is not None)
    if allowed is not None and not len(allowed):
        return np.empty(0, np.int64), np.empty(0, np.float32), 0
    if allowed is None or space.filters_exactly:
        ids, dists = space.search(vector, want) if allowed is None else space.search(vector, want, rows=allowed)
        ids, dists = np.asarray(ids), np.asarray(dists)
        keep = ids != skip
        return ids[keep][:k], dists[keep][:k], want
    passes = np.zeros(items, dtype=bool)
    passes[allowed] = True
    limit = max(min(items, OVERFETCH_LIMIT), want)
    fetch = min(limit, max(2 * want * items // len(allowed), OVERFETCH_GROWTH * want))  # twice the expected need
    while True:
        ids, dists = (np.asarray(a) for a in space.search(vector, fetch))
        keep = passes[ids] & (ids != skip)
        if keep.sum() >= k or len(ids) < fetch or fetch >= limit:
            return ids[keep][:k], dists[keep][:k], fetch
        fetch = min(limit, fetch * OVERFETCH_GROWTH)


def shortfall(space: Space, passed: int, k: int, cutoff: float | None, filtered: bool, looked: int) -> str:
    """One sentence: why a space has fewer than k results."""
    why = ", ".join(([f"closer than {space.format_distance(cutoff)}"] if cutoff is not None else [])
                    + (["in the folders and classes chosen"] if filtered else []))
    among = (f"; its index was asked for its {looked:,} nearest" if filtered and not space.filters_exactly else "")
    return f"{space.title}: {passed} of {k} results passed ({why}){among}."


def distance_cutoffs(max_distance, names: list[str]) -> dict[str, float]:
    """`max_distance` (None, one number for every space, or {space: number}) as {space: number}."""
    if max_distance is None:
        return {}
    given = max_distance if isinstance(max_distance, dict) else {name: max_distance for name in names}
    out = {}
    for name, d in given.items():
        if name not in names:
            raise ValueError(f"max_distance names the {name!r} space, which this search does not use.")
        try:
            out[name] = float(d)
        except (TypeError, ValueError):
            raise ValueError(f"The maximum distance must be a number, not {d!r}.") from None
        if not out[name] >= 0:  # NaN too
            raise ValueError(f"The maximum distance must be zero or more, not {d!r}.")
    return out


def as_list(value) -> list:
    """None, one value, or a list of them -> a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def clean_folder(folder: str) -> str:
    """A folder relative to the collection's root, normalised ("" for the root), or ValueError."""
    text = str(folder).strip()
    parts = [p for p in text.replace("\\", "/").split("/") if p not in ("", ".")]
    if text.startswith("/") or ".." in parts:
        raise ValueError(f"A folder is given relative to the collection's root, inside it; {folder!r} is not.")
    return os.sep.join(parts)


def printable(name: str | None) -> str | None:
    """A name as a page or a terminal can show it: bytes that were not UTF-8 (kept as surrogates) become U+FFFD."""
    return None if name is None else name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
