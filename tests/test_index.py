"""Build, publish and load an index; search it; catch every mismatch."""
import json
import shutil
import threading

import numpy as np
import pytest

from imgsearch import layout
from imgsearch.index import build_index, BuildError, rebuild_source
from imgsearch.integrity import IndexLoadError, read_meta
from imgsearch.publish import resolve
from imgsearch.search import Index

from conftest import angular_slack, tiny_checkpoint

pytestmark = pytest.mark.numeric  # encoded codes and the distances of every space
from test_hardening_index import reseal


def test_meta_describes_the_index(index_dir, collection, checkpoint):
    meta = read_meta(index_dir)
    assert meta["items"] == 60 and meta["code_dim"] == 64 and meta["format"] == "imgsearch-index-v2"
    spaces = meta["spaces"]
    assert list(spaces) == ["pixel", "pca", "code", "bits"]
    assert spaces["code"]["metric"] == "angular" and spaces["code"]["dims"] == 64
    code = spaces["code"]["settings"]
    assert code["structure"] == "annoy" and code["n_trees"] == 4 and code["search_k"] == 1000 and code["ann_dims"] == 64
    assert spaces["pixel"]["dims"] == 3072 and spaces["pca"]["dims"] == 256
    assert spaces["bits"]["metric"] == "hamming" and spaces["bits"]["bits"] == 64 and spaces["bits"]["bytes_per_item"] == 8
    assert meta["classes"] == ["blue", "green", "red"]
    assert meta["collection"] == collection.spec and meta["skipped"] == 0
    assert len(meta["model"]["fingerprint"]) == 16 and meta["preprocessing"]["size"] == 32
    files = {p.name for p in resolve(index_dir).iterdir()}
    assert files == {"meta.json", "model.pt", "codes.npy", "code_ann_directions.npy", "codes.ann", "code_ann_rows.npy",
                     "pixels.npy", "labels.npy", "paths.json", "file_stats.npy", "map_code.npy", "map_pixel.npy",
                     "pixel_bound.npz", "pca.npz", "bits.npz"}
    assert files >= {f for s in meta["spaces"].values() for f in s["files"]}


def test_the_code_space_built_beside_the_others_gives_the_files_of_a_build_in_turn(tmp_path, collection, checkpoint,
                                                                                   monkeypatch):
    from imgsearch.spaces import SpaceError
    from imgsearch.spaces.code import CodeSpace

    threads = []
    build = CodeSpace.build.__func__
    monkeypatch.setattr(CodeSpace, "build", classmethod(
        lambda cls, *a, **kw: threads.append(threading.current_thread()) or build(cls, *a, **kw)))
    build_index(collection, checkpoint, tmp_path / "beside", search_k=4, progress=False)
    monkeypatch.setattr(CodeSpace, "builds_beside", False)
    build_index(collection, checkpoint, tmp_path / "in_turn", search_k=4, progress=False)
    assert threads[0] is not threading.main_thread() and threads[1] is threading.main_thread()
    beside, in_turn = read_meta(tmp_path / "beside"), read_meta(tmp_path / "in_turn")
    assert beside["checksums"] == in_turn["checksums"]  # every file, the maps included, bit for bit
    assert list(beside["spaces"]) == list(in_turn["spaces"]) == ["pixel", "pca", "code", "bits"]
    assert beside["spaces"] == in_turn["spaces"] and list(beside["space_seconds"]) == list(in_turn["space_seconds"])

    # A space that cannot be built in its thread stops the build with its sentence, as in turn: an index
    # never silently lacks a space it was asked for, and nothing is published.
    def refuse(cls, *a, **kw):
        raise SpaceError("the code space refuses")
    monkeypatch.setattr(CodeSpace, "builds_beside", True)
    monkeypatch.setattr(CodeSpace, "build", classmethod(refuse))
    with pytest.raises(BuildError, match="^The code space cannot be built: the code space refuses.$"):
        build_index(collection, checkpoint, tmp_path / "refused", maps=False, progress=False)
    assert not (tmp_path / "refused").exists() and not list((tmp_path / "refused.builds").glob("*.partial"))


def test_files_are_row_aligned(index_dir, collection):
    index = Index.load(index_dir)
    assert len(index) == 60
    assert (index.pixels == collection.pixels).all()
    assert index.paths == collection.paths
    assert [index.label(i) for i in range(60)] == [collection.label_name(i) for i in range(60)]
    for i in (0, 31, 59):
        trees = index.spaces["code"].structure  # item i's Annoy item holds code i at unit length, projected
        unit = index.codes[i] / np.linalg.norm(index.codes[i])
        [item] = np.flatnonzero(trees.ann_rows == i)
        assert np.allclose(trees.ann.get_item_vector(int(item)), unit @ trees.directions, atol=1e-6)
        assert np.allclose(index.encode(collection.pixels[i]), index.codes[i], atol=1e-5)


def test_maps_have_one_point_per_item_in_item_order(index_dir, collection):
    index = Index.load(index_dir)
    for space in ("code", "pixel"):
        xy = index.maps[space]
        assert xy.shape == (60, 2) and np.isfinite(xy).all()
    # The colour classes are far apart in pixel space: if row i were not item i they would mix.
    xy = index.maps["pixel"]
    centres = np.stack([xy[collection.labels == c].mean(0) for c in range(3)])
    spread = max(np.linalg.norm(xy[collection.labels == c] - centres[c], axis=1).mean() for c in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert min(gaps) > 2 * spread


def test_a_map_of_the_wrong_length_is_refused(index_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(resolve(index_dir), copy)
    np.save(copy / "map_code.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(IndexLoadError, match="map_code.npy"):
        Index.load(copy)


def test_a_database_image_is_its_own_first_hit_in_both_spaces(index_dir, collection):
    index = Index.load(index_dir)
    for i in (0, 17, 44):
        res = index.search(i, k=5, exclude_self=False)
        assert res.pixel[0].id == i and res.pixel[0].distance == 0  # uint8 pixels, compared exactly
        assert res.code[0].id == i and res.code[0].distance <= angular_slack(index.codes.shape[1])
        by_path = index.search(collection.paths[i], k=5, exclude_self=False)
        assert by_path.query_id == i and by_path.code[0].id == i


def test_a_query_from_the_collection_excludes_itself(index_dir, collection):
    index = Index.load(index_dir)
    res = index.search(7, k=5)
    assert len(res.pixel) == len(res.code) == 5
    assert 7 not in [h.id for h in res.pixel + res.code]
    assert 7 not in [h.id for h in index.search(collection.paths[7], k=5).code]


def test_pixel_search_is_exact(index_dir, collection):
    index = Index.load(index_dir)
    q = collection.pixels[3]
    exact = np.sqrt(((collection.pixels.reshape(60, -1) / 255.0 - q.reshape(-1) / 255.0) ** 2).sum(1))
    res = index.search(q, k=10, exclude_self=False)
    assert [h.id for h in res.pixel] == list(np.argsort(exact, kind="stable")[:10])
    assert [h.distance for h in res.pixel] == pytest.approx(np.sort(exact)[:10], abs=1e-4)
    assert res.pixel[0].label == "blue" and res.pixel[0].path == collection.paths[3]


def test_hits_are_sorted_and_carry_labels(index_dir):
    res = Index.load(index_dir).search(40, k=10)
    for hits in (res.pixel, res.code):
        d = [h.distance for h in hits]
        assert d == sorted(d)
        assert all(h.label in ("blue", "green", "red") for h in hits)
    # the test colours are trivially separable in pixel space
    assert all(h.label == "red" for h in res.pixel)


@pytest.mark.parametrize("code_index", ["faiss", "annoy"])
def test_seeded_builds_are_identical(tmp_path, collection, checkpoint, code_index):
    a = build_index(collection, checkpoint, tmp_path / "a", code_index=code_index, maps=False, progress=False)
    b = build_index(collection, checkpoint, tmp_path / "b", code_index=code_index, maps=False, progress=False)
    names = {f for s in read_meta(a["index"])["spaces"].values() for f in s["files"]}
    assert (layout.ANNOY in names) == (code_index == "annoy") and (layout.FAISS_INDEX in names) == (code_index == "faiss")
    for name in sorted(names | {"pixels.npy", "labels.npy", "paths.json"}):
        assert (resolve(a["index"]) / name).read_bytes() == (resolve(b["index"]) / name).read_bytes(), name


def test_rebuild_swaps_atomically_and_the_old_index_keeps_serving(tmp_path, collection, checkpoint):
    out = tmp_path / "index"
    build_index(collection, checkpoint, out, search_k=2, maps=False, progress=False)
    first = resolve(out)
    old = Index.load(out)
    seen = []

    def during(step, frac):  # called while the new build is being written
        if step == "writing":
            seen.append(resolve(out))
            assert Index.load(out).path == first  # readers still get the complete old index
            assert old.search(5, k=3).code  # and an open one keeps answering

    build_index(collection, checkpoint, out, search_k=3, maps=False, progress=False, on_step=during)
    assert seen == [first]
    assert resolve(out) != first and read_meta(out)["spaces"]["code"]["settings"]["search_k"] == 3
    assert old.search(5, k=3).pixel and old.meta["spaces"]["code"]["settings"]["search_k"] == 2
    assert not [p for p in (tmp_path / "index.builds").iterdir() if p.name.endswith(".partial")]


def test_a_failed_build_leaves_the_old_index_in_place(tmp_path, collection, checkpoint):
    out = tmp_path / "index"
    build_index(collection, checkpoint, out, search_k=2, maps=False, progress=False)
    first = resolve(out)

    def fail(step, frac):
        if step == "writing":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(collection, checkpoint, out, search_k=3, maps=False, progress=False, on_step=fail)
    assert resolve(out) == first and Index.load(out).meta["spaces"]["code"]["settings"]["search_k"] == 2
    assert not [p for p in (tmp_path / "index.builds").iterdir() if p.name.endswith(".partial")]


def test_concurrent_readers_never_see_a_half_index(tmp_path, collection, checkpoint):
    out = tmp_path / "index"
    build_index(collection, checkpoint, out, search_k=2, maps=False, progress=False)
    errors, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                Index.load(out)
            except Exception as e:  # noqa: BLE001 - any failure is the bug under test
                errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    for search_k in (3, 4, 5):
        build_index(collection, checkpoint, out, search_k=search_k, maps=False, progress=False)
    stop.set()
    t.join()
    assert errors == []


def test_a_different_model_is_refused(copy_of, tmp_path):
    other = tiny_checkpoint(tmp_path / "other.pt", code_dim=64, seed=1)
    with pytest.raises(IndexLoadError, match="was built by model"):
        Index.load(copy_of, model_path=other)


def test_run_sh_rebuilds_only_what_an_earlier_shipped_model_built(tmp_path, collection_dir):
    shipped = tiny_checkpoint(tmp_path / "shipped.pt", seed=0)
    out = tmp_path / "index"
    assert rebuild_source(out, "cifar10", shipped=shipped) == "cifar10"  # no index yet: the default data
    build_index(str(collection_dir), shipped, out, maps=False, progress=False)
    assert rebuild_source(out, "cifar10", shipped=shipped) is None  # built by the shipped model as it is
    other = tiny_checkpoint(tmp_path / "other.pt", seed=2)
    assert rebuild_source(out, "cifar10", shipped=other) is None  # another model: built so on purpose
    tiny_checkpoint(shipped, seed=1)  # a pull brings a new shipped model to the same path
    assert rebuild_source(out, "cifar10", shipped=shipped) == str(collection_dir)  # from its own collection


def test_a_different_code_dimension_is_refused(copy_of, tmp_path):
    shutil.copy(tiny_checkpoint(tmp_path / "wide.pt", code_dim=32), copy_of / "model.pt")
    meta = json.loads((copy_of / "meta.json").read_text())
    from imgsearch.model import fingerprint
    meta["model"]["fingerprint"] = fingerprint(copy_of / "model.pt")
    (copy_of / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexLoadError, match="32-d codes but the index holds 64-d"):
        Index.load(copy_of)


@pytest.mark.parametrize("damage, words", [
    (lambda d: (d / "codes.ann").write_bytes((d / "codes.ann").read_bytes()[:1000]), "codes.ann"),
    (lambda d: (d / "code_ann_rows.npy").unlink(), "code_ann_rows.npy"),
    (lambda d: (d / "meta.json").write_text("{not json"), "corrupt"),
    (lambda d: (d / "meta.json").unlink(), "No index"),
    (lambda d: (d / "model.pt").write_bytes(b"garbage"), "not a readable"),
    (lambda d: np.save(d / "pixels.npy", np.zeros((5, 32, 32, 3), np.uint8)), "pixels.npy"),
    (lambda d: (d / "codes.npy").write_bytes(b"\x93NUMPY broken"), "missing or corrupt"),
    (lambda d: (d / "paths.json").write_text("[]"), "paths.json"),
])
def test_corrupt_files_are_refused_with_a_reason(copy_of, damage, words):
    damage(copy_of)
    with pytest.raises(IndexLoadError, match=words) as e:
        Index.load(copy_of)
    assert "\n" not in str(e.value)


def test_codes_that_disagree_with_the_ann_file_are_refused(copy_of):
    codes = np.load(copy_of / "codes.npy")
    np.save(copy_of / "codes.npy", codes[::-1].copy())
    reseal(copy_of)  # the checksums would refuse it first; this check stands behind them
    with pytest.raises(IndexLoadError, match="disagree"):
        Index.load(copy_of)


def test_missing_index_says_how_to_build_one(tmp_path):
    with pytest.raises(IndexLoadError, match="build_index.py"):
        Index.load(tmp_path / "nothing")


def test_out_of_range_item_is_a_clear_error(index_dir):
    with pytest.raises(IndexError, match="0..59"):
        Index.load(index_dir).search(60)


def test_a_random_item_is_never_the_one_to_avoid_unless_it_is_the_only_one(index_dir):
    from imgsearch.search import Index

    index = Index.load(index_dir)
    rng = np.random.default_rng(0)
    assert all(index.random_item(rng, other_than=5) != 5 for _ in range(300))
    label = index.label(5)
    picks = {index.random_item(rng, label, other_than=5) for _ in range(300)}
    assert 5 not in picks and {index.label(i) for i in picks} == {label}
    assert index.random_item(rng, other_than=None) in range(len(index))
