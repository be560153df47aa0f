"""The cluster extras (requirements-cluster.txt): the code and bits spaces in Milvus (Lite, and a real
embedded Milvus standalone server), and decoding and encoding on a local Ray."""
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import sys

from conftest import OFFLINE, ROOT
from imgsearch import layout
from imgsearch.cli import main
from imgsearch.index import build_index
from imgsearch.integrity import IndexLoadError
from imgsearch.publish import builds_dir, prune, resolve
from imgsearch.search import Index
from imgsearch.spaces.milvus import MilvusError, builds_prefix, connect

sys.path.insert(0, str(ROOT / "scripts"))
from milvus_server import free_port  # noqa: E402 - the benchmark's own server helpers

pytest.importorskip("pymilvus", reason="the cluster extras are not installed (pip install -r requirements-cluster.txt)")
MILVUS_LITE = {"code": {"backend": "milvus"}, "bits": {"backend": "milvus"}}


def milvus_options(uri: str) -> dict:
    return {name: {**o, "uri": uri} for name, o in MILVUS_LITE.items()}


def exact_angular_topk(codes: np.ndarray, q: int, k: int) -> np.ndarray:
    unit = codes / np.linalg.norm(codes, axis=1, keepdims=True)
    cos = unit @ unit[q]
    cos[q] = -np.inf  # the query leaves itself out, as Index.search does
    return np.argsort(-cos, kind="stable")[:k]


def one_sentence(text: str) -> bool:
    return "Traceback" not in text and len(text.strip().splitlines()) == 1


# ---- Milvus Lite -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lite_index(tmp_path_factory, collection_dir, checkpoint):
    tmp = tmp_path_factory.mktemp("lite")
    out = tmp / "index"
    build_index(str(collection_dir), checkpoint, out, options=milvus_options(str(tmp / "vectors.db")),
                spaces=["code", "bits"], progress=False, maps=False)
    return out


def test_lite_holds_the_code_and_leaves_the_bits_local(lite_index, collection_dir):
    meta = json.loads((resolve(lite_index) / layout.META).read_text())
    code, bits = meta["spaces"]["code"]["settings"], meta["spaces"]["bits"]["settings"]
    assert code["backend"] == "milvus" and code["deployment"] == "lite" and os.path.isabs(code["uri"])
    assert code["collection"].startswith(builds_prefix(builds_dir(lite_index)))
    assert code["collection"].endswith(resolve(lite_index).name.replace("-", "_") + "_code")
    assert "n_trees" not in code and not (resolve(lite_index) / layout.ANNOY).exists()
    assert bits["backend"] == "local" and "binary vectors" in bits["milvus"]  # Lite refuses them, and says so
    client = connect(code["uri"])
    assert client.has_collection(code["collection"])


def test_lite_answers_are_exact_search(lite_index, index_dir):
    index, annoy = Index.load(lite_index), Index.load(index_dir)
    assert type(index.spaces["code"].structure).__name__ == "MilvusCodeIndex"
    assert np.array_equal(index.codes, annoy.codes)  # the same folder and model: the same codes
    for q in (0, 17, 33, 59):
        res = index.search(q, k=5, spaces=["code", "bits"])
        want = exact_angular_topk(np.asarray(index.codes), q, 5)
        got = [h.id for h in res.code]
        assert sorted(got) == sorted(want.tolist())  # FLAT on Lite: exact (order may swap only on equal distances)
        ref = annoy.search(q, k=5, spaces=["code", "bits"])  # Annoy over 60 items inspects them all: exact too
        assert np.allclose([h.distance for h in res.code], [h.distance for h in ref.code], atol=1e-4)
        assert [(h.id, h.distance) for h in res.hits["bits"]] == [(h.id, h.distance) for h in ref.hits["bits"]]


def test_the_cli_builds_on_lite_and_searches_it(tmp_path, collection_dir, checkpoint, capsys):
    out, uri = tmp_path / "index", tmp_path / "cli.db"
    assert main(["build-index", "--data", str(collection_dir), "--model", str(checkpoint), "--out", str(out),
                 "--backend", "milvus", "--milvus-uri", str(uri), "--spaces", "code,bits", "--no-maps"]) == 0
    capsys.readouterr()
    image = next(collection_dir.glob("red/*.png"))
    assert main(["search", str(image), "--index", str(out), "--spaces", "code,bits", "--json", "-k", "3"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits["code"]) == 3 and len(hits["bits"]) == 3
    assert all(h["label"] == "red" for h in hits["code"])  # the tiny model still separates the colours


# ---- one sentence, never a traceback ---------------------------------------------------------

def test_an_unreachable_server_is_one_sentence(tmp_path, collection_dir, checkpoint, capsys):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(MilvusError) as e:
        build_index(str(collection_dir), checkpoint, tmp_path / "index", options=milvus_options(uri),
                    spaces=["code"], progress=False, maps=False)
    assert one_sentence(str(e.value)) and "cannot be reached" in str(e.value)
    assert not (tmp_path / "index").exists()  # nothing published
    rc = main(["build-index", "--data", str(collection_dir), "--model", str(checkpoint), "--out", str(tmp_path / "i2"),
               "--backend", "milvus", "--milvus-uri", uri])
    err = capsys.readouterr().err
    assert rc == 1 and one_sentence(err) and err.startswith("error: The Milvus server at")
    assert main(["build-index", "--data", str(collection_dir), "--backend", "milvus", "--milvus-uri", "somewhere"]) == 1
    assert "is not a Milvus URI" in capsys.readouterr().err


def test_a_missing_collection_or_server_at_load_is_one_sentence(lite_index, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(resolve(lite_index), build)
    meta = json.loads((build / layout.META).read_text())
    section = meta["spaces"]["code"]["settings"]
    for change, words in (({"collection": section["collection"] + "_gone"}, "does not exist"),
                          ({"uri": f"http://127.0.0.1:{free_port()}"}, "cannot be reached")):
        meta["spaces"]["code"]["settings"] = {**section, **change}
        (build / layout.META).write_text(json.dumps(meta))
        with pytest.raises(IndexLoadError) as e:
            Index.load(build)
        assert words in str(e.value) and one_sentence(str(e.value))
    meta["spaces"]["code"]["settings"] = {k: v for k, v in section.items() if k != "collection"}
    (build / layout.META).write_text(json.dumps(meta))
    with pytest.raises(IndexLoadError, match="has no collection setting"):
        Index.load(build)


# ---- Ray -------------------------------------------------------------------------------------

@pytest.fixture
def own_ray(monkeypatch):
    """Ray's files (and so its sockets and session) in a folder of this test's own, not /tmp/ray, which a
    Ray already running on the machine holds; short, since a Unix socket's path has at most 107 bytes."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -r requirements-cluster.txt)")
    base = tempfile.mkdtemp(prefix="ray")
    monkeypatch.setenv("RAY_TMPDIR", base)
    try:
        yield
    finally:
        ray.shutdown()  # a test that fails half-way must not leave its raylet and workers behind
        shutil.rmtree(base, ignore_errors=True)


def test_ray_encodes_what_the_plain_build_encodes_and_resumes_its_batches(tmp_path, collection_dir, checkpoint,
                                                                          own_ray):
    from imgsearch.ingest import local_batches

    data = tmp_path / "images"
    shutil.copytree(collection_dir, data)
    (data / "red" / "zz-broken.png").write_bytes(b"not an image")  # skipped, and counted, by both pipelines
    plain = build_index(str(data), checkpoint, tmp_path / "plain", spaces=["code"], batch_size=16,
                        progress=False, maps=False)

    def killed_after_two(source, model, todo, batch_size):  # a build that dies after two batches
        for n, batch in enumerate(local_batches(source, model, todo, batch_size)):
            if n == 2:
                raise KeyboardInterrupt
            yield batch

    out = tmp_path / "ray"
    with pytest.raises(KeyboardInterrupt):
        build_index(str(data), checkpoint, out, spaces=["code"], batch_size=16, progress=False, maps=False,
                    batches=killed_after_two)
    assert main(["build-index", "--data", str(data), "--model", str(checkpoint), "--out", str(out), "--ray",
                 "--spaces", "code", "--batch-size", "16", "--no-maps"]) == 0
    a, b = resolve(plain["index"]), resolve(out)
    assert json.loads((b / layout.META).read_text())["ingest"]["resumed_batches"] == 2
    for name in (layout.CODES, layout.PIXELS, layout.LABELS):
        assert np.array_equal(np.load(a / name), np.load(b / name)), name  # bit for bit
    assert (a / layout.PATHS).read_text() == (b / layout.PATHS).read_text()
    assert [json.loads((d / layout.META).read_text())["skipped"] for d in (a, b)] == [1, 1]


# ---- a real Milvus server --------------------------------------------------------------------

PER_CLASS = 300  # 3,000 images of the offline copy: HNSW and BIN_FLAT on real codes, in seconds
QUERIES = 200


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    pytest.importorskip("milvus", reason="the embedded Milvus server package is not installed")
    from milvus_server import start_server

    server, uri = start_server(tmp_path_factory.mktemp("milvus"))  # about 10 s; every port its own
    try:
        yield server, uri
    finally:
        server.stop()


@pytest.fixture(scope="module")
def offline_folder(tmp_path_factory):
    if not (OFFLINE / "train").is_dir():
        pytest.skip(f"the offline CIFAR-10 copy is not at {OFFLINE}")
    root = tmp_path_factory.mktemp("cifar")
    for cls in sorted(p for p in (OFFLINE / "train").iterdir() if p.is_dir()):
        (root / cls.name).mkdir()
        for f in sorted(cls.iterdir())[:PER_CLASS]:
            (root / cls.name / f.name).symlink_to(f)
    return root


def test_a_milvus_server_holds_both_spaces_through_a_rebuild(milvus_server, offline_folder, tmp_path):
    server, uri = milvus_server
    model = ROOT / "models" / "cifar10-ae.pt"
    common = dict(spaces=["code", "bits"], progress=False, maps=False)
    reference = build_index(str(offline_folder), model, tmp_path / "annoy", **common)
    out = tmp_path / "milvus"
    build_index(str(offline_folder), model, out, options=milvus_options(uri), **common)
    first = resolve(out)
    meta = json.loads((first / layout.META).read_text())
    names = [meta["spaces"][s]["settings"]["collection"] for s in ("code", "bits")]
    assert [meta["spaces"][s]["settings"]["deployment"] for s in ("code", "bits")] == ["server", "server"]
    client = connect(uri)
    assert set(names) <= set(client.list_collections())

    index, annoy = Index.load(out), Index.load(reference["index"])
    assert type(index.spaces["bits"].scan).__name__ == "MilvusBits"
    codes = np.asarray(index.codes)
    queries = np.random.default_rng(0).choice(len(index), QUERIES, replace=False)
    recall = {"milvus": [], "annoy": []}
    for q in queries:
        exact = set(exact_angular_topk(codes, q, 10).tolist())
        for name, idx in (("milvus", index), ("annoy", annoy)):
            res = idx.search(int(q), k=10, spaces=["code", "bits"])
            recall[name].append(len(exact & {h.id for h in res.code}) / 10)
            if name == "milvus":
                got = res.hits["bits"]
            else:
                want = res.hits["bits"]
        # bits: exact Hamming in both, so the same distances; the same ids except among ties at the 10th distance
        assert [h.distance for h in got] == [h.distance for h in want]
        last = want[-1].distance
        assert [h.id for h in got if h.distance < last] == [h.id for h in want if h.distance < last]
    assert np.mean(recall["milvus"]) >= 0.98, np.mean(recall["milvus"])
    assert np.mean(recall["annoy"]) >= 0.95  # the reference itself is approximate

    # Rebuild while queries run: the index loaded before the switch keeps its collections, a fresh load
    # during the switch gets the old build or the new one whole, and no query fails.
    errors, served, stop = [], [0], threading.Event()

    def query_loop():
        while not stop.is_set():
            try:  # mostly the index loaded before the switch; every tenth query a fresh load
                idx = Index.load(out) if served[0] % 10 == 0 else index
                assert len(idx.search(int(queries[served[0] % QUERIES]), k=10, spaces=["code", "bits"]).code) == 10
                served[0] += 1
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(repr(e))
            time.sleep(0.02)  # leave the cores to the build

    thread = threading.Thread(target=query_loop)
    thread.start()
    try:
        build_index(str(offline_folder), model, out, options=milvus_options(uri), **common)
        time.sleep(1)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:3]
    assert served[0] > 0
    second = resolve(out)
    assert second != first
    new_names = [json.loads((second / layout.META).read_text())["spaces"][s]["settings"]["collection"]
                 for s in ("code", "bits")]
    assert not set(new_names) & set(names) and set(new_names) <= set(client.list_collections())
    assert set(names) <= set(client.list_collections())  # the previous build is kept, and so are its collections

    # A collection whose build is gone (a build that failed after writing it) is swept up too.
    orphan = f"{builds_prefix(builds_dir(out))}20000101_000000_deadbeef_code"
    client.create_collection(orphan, dimension=8)
    removed = prune(builds_dir(out), protect=[second], keep=1, grace=0)
    assert removed == [first]
    left = set(client.list_collections())
    assert not (set(names) | {orphan}) & left and set(new_names) <= left
    assert len(Index.load(out).search(0, k=10, spaces=["code", "bits"]).code) == 10

    # The server gone: loading says so in one sentence, and so does a search by a page that loaded
    # before (test_spaces checks that the other spaces still answer).
    live = Index.load(out)
    server.stop()
    with pytest.raises(IndexLoadError) as e:
        Index.load(out)
    assert one_sentence(str(e.value)) and "cannot be reached" in str(e.value)
    results = live.search(0, k=5, spaces=["code", "bits"])
    assert results.code == results.hits["bits"] == []
    assert set(results.unavailable) == {"code", "bits"}
    assert all(one_sentence(why) and "cannot be reached" in why for why in results.unavailable.values())
