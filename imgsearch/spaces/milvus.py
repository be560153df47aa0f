"""The code and bits spaces in Milvus: past one machine, the vectors live in a vector database.

    build_index(..., options={"code": {"backend": "milvus", "uri": URI}, "bits": {"backend": "milvus", "uri": URI}})
    imgsearch build-index ... --backend milvus --milvus-uri URI

URI is a path ending in `.db` (Milvus Lite: embedded in this process, no server) or
`http://host:19530` (a Milvus standalone server or a cluster). One collection per space (Milvus
2.3 allows one vector field per collection), primary key = item id, so row i of every file in
the index directory is still item i. Everything else (pixels, labels, the bits' projection)
stays in the index directory, and meta.json records the backend, the URI and the collection:
`Index.load`, the page and the CLI do not know where the vectors live.

- code: a float-vector field, cosine; HNSW on a server, FLAT (exact) on Lite. Distances are
  returned as Annoy's angular distance sqrt(2 - 2 cos), the unit the code space always had.
- bits: a binary-vector field, Hamming, BIN_FLAT (exact). Milvus Lite refuses binary vectors,
  so on a Lite URI the bits space stays in the index directory (exact Hamming, bits.py) and its
  meta.json section says so.

Atomic publish: each build writes new collections, named after its build directory (and,
so that indexes sharing a server never touch each other's, after the builds folder), and
`index.prune` drops them when it deletes that build. Readers of the old build keep searching
its collections until then. The collections are immutable once built: they are flushed and
their index finished before the build is published, so queries need no strong consistency.

pymilvus is imported only when a Milvus-backed space is built or loaded (`pip install -e .[cluster]`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import layout
from .base import BuildInput, LoadInput, SpaceError, SpaceUnavailable, load_npz
from .code_index import CodeIndex
from .hashing import ITQ_ITERATIONS, binarise, fit_binariser
from .vectors import CHECKED_ITEMS, METRIC, angular

BACKEND = "milvus"
PREFIX = "imgsearch"  # every collection this project creates starts so; pruning touches no other
ID, VECTOR = "id", "vector"  # the two fields of every collection
HNSW = {"M": 16, "efConstruction": 200}  # Milvus' usual graph: 50,000 codes inserted, indexed and loaded in 56 s here
EF = 64  # HNSW candidates per query: recall@10 0.992 vs exact at 50,000, p50 3.1 ms; 32 gives 0.967 (docs/scale.md)
INSERT_ROWS = 5000  # rows per insert call: 5 MB of 256-d floats, far below gRPC's 64 MB message limit
CONNECT_TIMEOUT = 10  # seconds: an unreachable server fails the build or the load in one sentence, soon
SEARCH_TIMEOUT = 5  # seconds: a query against a server gone since the load fails fast instead of hanging the page
INDEX_WAIT = 1800  # seconds a build waits for the server to finish the HNSW graph before publishing


class MilvusError(RuntimeError):
    """The Milvus server or Lite file cannot be used; the message says why in one sentence."""


def is_lite(uri: str) -> bool:
    """A local `.db` path is Milvus Lite (pymilvus' own rule); anything else must be a server URI."""
    return "://" not in uri and uri.endswith(".db")


def check_uri(uri: str | None) -> str:
    """The URI as meta.json records it (a Lite path made absolute: the page may run elsewhere), or MilvusError."""
    if not uri:
        raise MilvusError("The Milvus backend needs a URI (--milvus-uri): a path ending in .db for Milvus Lite, "
                          "or http://host:19530 for a server.")
    if is_lite(uri):
        return os.path.abspath(uri)
    if not re.match(r"(https?|tcp|grpc)://[^/\s]+", uri):
        raise MilvusError(f"{uri!r} is not a Milvus URI: use a path ending in .db (Milvus Lite) or "
                          "http://host:19530 (a server).")
    return uri


@contextmanager
def _quiet():
    """pymilvus and milvus-lite log every failed call with its traceback; the caller turns failures into a sentence."""
    loggers = [logging.getLogger(n) for n in ("pymilvus", "milvus_lite")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _why(e: Exception) -> str:
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    return text.splitlines()[0][:200]


def connect(uri: str):
    """A MilvusClient for `uri`, or MilvusError saying why not."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise MilvusError("The Milvus backend needs pymilvus and milvus-lite: pip install -e .[cluster] "
                          "(or -r requirements-cluster.txt).") from None
    if is_lite(uri) and not Path(uri).parent.is_dir():
        raise MilvusError(f"The folder of the Milvus Lite file {uri} does not exist.")
    try:
        with _quiet():
            client = MilvusClient(uri, timeout=CONNECT_TIMEOUT)
            client.list_collections(timeout=CONNECT_TIMEOUT)  # pymilvus reuses a connection to a URI: is it alive?
            return client
    except Exception as e:  # noqa: BLE001 - pymilvus raises its own and gRPC's errors: each means "not usable"
        if is_lite(uri):
            raise MilvusError(f"The Milvus Lite file {uri} cannot be opened ({_why(e)}); Milvus Lite serves one "
                              "process at a time, so another process (the page, a build) may hold it: stop "
                              "that one, or use a Milvus server.") from None
        raise MilvusError(f"The Milvus server at {uri} cannot be reached ({_why(e)}).") from None


def _call(uri: str, what: str, fn, *args, **kwargs):
    try:
        with _quiet():
            return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - as in connect
        raise MilvusError(f"Milvus at {uri} failed to {what} ({_why(e)}).") from None


def collection_name(directory: Path, space: str) -> str:
    """`imgsearch_<builds folder hash>_<build name>_<space>`: new per build, and recognisable by `prune`."""
    build = directory.name.removesuffix(".partial")
    return f"{builds_prefix(directory.parent)}{re.sub(r'[^0-9A-Za-z_]', '_', build)}_{space}"


def builds_prefix(builds: Path) -> str:
    """The collection-name prefix of one builds folder (Milvus names allow letters, digits and underscores)."""
    return f"{PREFIX}_{hashlib.sha256(str(Path(builds).resolve()).encode()).hexdigest()[:10]}_"


def create(client, uri: str, name: str, vectors: np.ndarray, *, binary: bool, index: dict) -> None:
    """A collection holding row i of `vectors` under primary key i, flushed and loaded, its index finished."""
    from pymilvus import DataType

    dim = vectors.shape[1] * 8 if binary else vectors.shape[1]
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID, DataType.INT64, is_primary=True)
    schema.add_field(VECTOR, DataType.BINARY_VECTOR if binary else DataType.FLOAT_VECTOR, dim=dim)
    params = client.prepare_index_params()
    params.add_index(VECTOR, index_type=index["index_type"], metric_type=index["metric_type"],
                     params=index["params"])
    if _call(uri, "look up a collection", client.has_collection, name):
        _call(uri, "drop a collection", client.drop_collection, name)  # a crashed attempt at this very build
    # Strong: the checks right after the insert see every row (Milvus 2.3 otherwise lags behind its inserts).
    # No index yet, so not loaded: loaded before its index was built, a collection was served by Milvus 2.3's
    # interim index (recall@10 0.966 at 50,000, whatever ef) until the server swapped segments, later.
    _call(uri, "create a collection", client.create_collection, name, schema=schema, consistency_level="Strong")
    try:
        for s in range(0, len(vectors), INSERT_ROWS):
            block = np.ascontiguousarray(vectors[s:s + INSERT_ROWS])
            rows = [{ID: s + i, VECTOR: v.tobytes() if binary else v} for i, v in enumerate(block)]
            _call(uri, "insert vectors", client.insert, name, rows)
        _call(uri, "flush a collection", client.flush, name)
        _call(uri, "index a collection", client.create_index, name, params)
        deadline = time.time() + INDEX_WAIT
        while time.time() < deadline:  # ("state" says Finished before the build has even started)
            state = _call(uri, "describe an index", client.describe_index, name, VECTOR)
            if int(state.get("indexed_rows", len(vectors))) >= len(vectors):
                break
            time.sleep(0.5)
        _call(uri, "load a collection", client.load_collection, name)
        stored = int(_call(uri, "count a collection", client.get_collection_stats, name)["row_count"])
        if stored != len(vectors):
            raise MilvusError(f"Milvus at {uri} holds {stored} of the {len(vectors)} vectors inserted into {name}.")
    except BaseException:
        with _quiet():
            try:
                client.drop_collection(name)  # nothing half-written is left behind on the server
            except Exception:  # noqa: BLE001 - the original failure is the one to report
                pass
        raise


def section_settings(uri: str, name: str, index: dict, search_params: dict) -> dict:
    return {"backend": BACKEND, "uri": uri, "deployment": "lite" if is_lite(uri) else "server",
            "collection": name, "index_type": index["index_type"], "index_params": index["params"],
            "search_params": search_params}


# ---- the code space --------------------------------------------------------------------------

def code_index(uri: str) -> tuple[dict, dict]:
    if is_lite(uri):  # Lite scans in Python either way; FLAT is at least exact
        return {"index_type": "FLAT", "metric_type": "COSINE", "params": {}}, {}
    return {"index_type": "HNSW", "metric_type": "COSINE", "params": dict(HNSW)}, {"ef": EF}


# What a Milvus-backed section's settings must hold (index.py checks them before anything loads).
CHECKS = {"uri": lambda x: isinstance(x, str) and len(x) > 0,
          "collection": lambda x: isinstance(x, str) and bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", x)),
          "search_params": lambda x: isinstance(x, dict)}


def open_collection(data: LoadInput, section: dict, expected) -> tuple[object, dict]:
    """Connect, find the collection, check its size and a few stored vectors against `expected(ids)`."""
    s = section["settings"]
    uri, name = s["uri"], s["collection"]
    try:
        client = connect(uri)
        if not _call(uri, "look up a collection", client.has_collection, name):
            raise SpaceError(f"the Milvus collection {name} at {uri} does not exist (dropped, or another server)")
        _call(uri, "load a collection", client.load_collection, name)
        stored = int(_call(uri, "count a collection", client.get_collection_stats, name)["row_count"])
        if stored != data.items:
            raise SpaceError(f"the Milvus collection {name} holds {stored} items, meta.json says {data.items}")
        ids = [int(i) for i in np.linspace(0, data.items - 1, num=min(CHECKED_ITEMS, data.items)).astype(int)]
        rows = {r[ID]: r[VECTOR] for r in _call(uri, "read vectors", client.query, name, ids=ids,
                                                 output_fields=[VECTOR])}
    except MilvusError as e:  # Index.load words it "The code space ... cannot be reached: <this>; try again ..."
        why = str(e).rstrip(".")
        raise SpaceUnavailable(why[0].lower() + why[1:]) from None
    want = expected(np.asarray(ids))
    for i, w in zip(ids, want):
        got = rows.get(i)
        if got is None or not _same(got, w):
            raise SpaceError(f"the Milvus collection {name} and {layout.CODES} disagree at item {i}")
    return client, s


def _same(stored, want: np.ndarray) -> bool:
    if want.dtype == np.uint8:  # binary: bytes (or a list holding them), as Milvus returns them
        raw = stored[0] if isinstance(stored, list) and stored and isinstance(stored[0], bytes) else stored
        return bytes(raw) == want.tobytes()
    return np.allclose(np.asarray(stored, dtype=np.float32), want, rtol=1e-4, atol=1e-5)


class MilvusCodeIndex(CodeIndex):
    """The codes in a Milvus collection, searched there (cosine), distances as angular."""
    name = BACKEND
    description = "the auto-encoder's float code, in Milvus (angular: sqrt(2 - 2 cos))"
    options = ("uri",)
    checks = CHECKS
    local = False

    def __init__(self, client, settings: dict):
        self.client, self.uri, self.collection = client, settings["uri"], settings["collection"]
        self.params = {"metric_type": "COSINE", "params": dict(settings["search_params"])}

    @classmethod
    def build(cls, data: BuildInput, directory: Path, *, uri: str | None = None) -> dict:
        uri = check_uri(uri)
        client = connect(uri)
        name = collection_name(directory, "code")
        index, search_params = code_index(uri)
        create(client, uri, name, np.asarray(data.codes, dtype=np.float32), binary=False, index=index)
        return {"metric": METRIC, "dims": int(data.codes.shape[1]), "files": [layout.CODES],
                "settings": {"structure": cls.name, **section_settings(uri, name, index, search_params)}}

    @classmethod
    def load(cls, data: LoadInput, section: dict) -> "MilvusCodeIndex":
        client, s = open_collection(data, section, lambda ids: np.asarray(data.codes[ids], dtype=np.float32))
        return cls(client, s)

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, sims = _search(self, np.asarray(vector, dtype=np.float32), k)
        return ids, angular(sims)


def _search(space, vector, k: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with _quiet():
            # The collection is immutable once published: "Eventually" skips Strong's wait for the next
            # time tick (200 ms per query on Milvus 2.3) and still sees every row.
            hits = space.client.search(space.collection, data=[vector], limit=k, anns_field=VECTOR,
                                       output_fields=[], search_params=space.params,
                                       consistency_level="Eventually", timeout=SEARCH_TIMEOUT)[0]
    except Exception as e:  # noqa: BLE001 - a server gone since the load: the page shows the other spaces and this
        raise SpaceUnavailable(f"Milvus at {space.uri} failed to search {space.collection} ({_why(e)})") from None
    ids = np.array([h["id"] for h in hits], dtype=np.int64)
    return ids, np.array([h["distance"] for h in hits], dtype=np.float32)


# ---- the bits space --------------------------------------------------------------------------

LITE_BITS = "Milvus Lite stores no binary vectors, so the bits stay in bits.npz (exact Hamming, this process)"


class MilvusBits:
    """The bits space's packed codes in a Milvus collection (Hamming, exact): what BitsSpace searches
    instead of its own scan. bits.npz keeps only what embeds a query (the mean and the projection)."""
    title = "Milvus"
    filters_exactly = False  # the server's index answers: a filtered search asks it for more (search.py)

    def __init__(self, client, settings: dict):
        self.client, self.uri, self.collection = client, settings["uri"], settings["collection"]
        self.params = {"metric_type": "HAMMING", "params": {}}

    @staticmethod
    def build(data: BuildInput, directory: Path, *, uri: str | None, bits: int, method: str) -> tuple[dict | None, str]:
        """(the bits space's section, "") with the bits in a Milvus collection; (None, why) on a Lite URI,
        where the caller builds them locally."""
        uri = check_uri(uri)
        if is_lite(uri):
            return None, LITE_BITS
        client = connect(uri)
        name = collection_name(directory, "bits")
        mean, projection = fit_binariser(data.codes, bits, method=method, seed=data.seed)
        packed = binarise(np.asarray(data.codes, dtype=np.float32), mean, projection).view(np.uint8)  # (N, bits / 8)
        index = {"index_type": "BIN_FLAT", "metric_type": "HAMMING", "params": {}}
        create(client, uri, name, packed, binary=True, index=index)
        np.savez(directory / layout.BITS, mean=mean, projection=projection)  # what embeds a query
        return {"metric": "hamming", "bits": bits, "bytes_per_item": bits // 8, "files": [layout.BITS],
                "settings": {"method": method, "itq_iterations": ITQ_ITERATIONS if method == "itq" else 0,
                             **section_settings(uri, name, index, {})}}, ""

    @classmethod
    def load(cls, data: LoadInput, section: dict) -> tuple["MilvusBits", np.ndarray, np.ndarray]:
        """(the collection, checked, the binariser's mean, its projection)."""
        a = load_npz(data, layout.BITS, ("mean", "projection"))
        bits = section["bits"]
        if a["projection"].shape != (data.codes.shape[1], bits):
            raise SpaceError(f"{layout.BITS} does not fit {data.codes.shape[1]}-d codes and {bits} bits")
        client, s = open_collection(data, section, lambda ids: binarise(np.asarray(data.codes[ids], dtype=np.float32),
                                                                        a["mean"], a["projection"]).view(np.uint8))
        return cls(client, s), a["mean"], a["projection"]

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, d = _search(self, np.asarray(vector).view(np.uint8).tobytes(), k)
        order = np.lexsort((ids, d))  # ties by the smaller id, as the local scan breaks them
        return ids[order], d[order]


# ---- publish and prune -----------------------------------------------------------------------

def collections_of(build: Path) -> dict[str, list[str]]:
    """URI -> the Milvus collections a build directory's meta.json names (none for a local build)."""
    try:
        spaces = json.loads((Path(build) / layout.META).read_text()).get("spaces", {})
    except (OSError, ValueError, AttributeError):
        return {}
    found: dict[str, list[str]] = {}
    for section in spaces.values() if isinstance(spaces, dict) else ():
        s = section.get("settings") if isinstance(section, dict) else None
        if isinstance(s, dict) and s.get("backend") == BACKEND and isinstance(s.get("uri"), str) \
                and isinstance(s.get("collection"), str):
            found.setdefault(s["uri"], []).append(s["collection"])
    return found


def drop_collections(build: Path) -> str | None:
    """Drop the collections of a build that is about to be deleted; None when done (or there were none),
    else why not: the caller keeps the build, so the next prune tries again instead of leaking them."""
    for uri, names in collections_of(build).items():
        try:
            client = connect(uri)
            for name in names:
                if _call(uri, "look up a collection", client.has_collection, name):
                    _call(uri, "drop a collection", client.drop_collection, name)
        except MilvusError as e:
            return str(e)
    return None


def drop_orphans(builds: Path, uris) -> list[str]:
    """Drop this builds folder's collections whose build directory is gone (a build that failed after
    writing them, or one deleted by hand); returns their names. Call under the build lock."""
    prefix = builds_prefix(builds)
    alive = {collection_name(p, "x")[:-2] for p in Path(builds).iterdir() if p.is_dir()}
    dropped = []
    for uri in uris:
        try:
            client = connect(uri)
            for name in _call(uri, "list collections", client.list_collections):
                if name.startswith(prefix) and name.rsplit("_", 1)[0] not in alive:
                    _call(uri, "drop a collection", client.drop_collection, name)
                    dropped.append(name)
        except MilvusError:
            continue  # unreachable now: the collections stay until a later prune reaches the server
    return dropped
