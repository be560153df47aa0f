"""Each space on tiny hand-checkable data, the registry, and exactness against brute force."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from imgsearch import layout
from imgsearch.index import build_index, BuildError
from imgsearch.integrity import IndexLoadError, read_meta
from imgsearch.knn import BruteForce, topk_ties_by_id
from imgsearch.pca import fit_pca
from imgsearch.search import Index
from imgsearch.spaces import SPACES, BuildInput, LoadInput, Query, Space, SpaceUnavailable, register_space
from imgsearch.spaces.bits import HammingScan, binarise, fit_binariser, word_major
from imgsearch.spaces.annoy_index import annoy_code_search, build_annoy, locality_order
from imgsearch.spaces.backends import CODE_INDEXES, register_code_index
from imgsearch.spaces.code import served_code_search
from imgsearch.spaces.code_index import CodeIndex
from imgsearch.spaces.vectors import METRIC, rerank, unit_rows
from imgsearch.spaces.pixel import PixelSpace, squared_distances

from conftest import angular_slack, dot_slack, reseal

pytestmark = pytest.mark.numeric  # compares distances that BLAS, torch and faiss computed


# ---- building blocks -----------------------------------------------------------------------

def counted(words: np.ndarray, q: np.ndarray) -> list[int]:
    """Hamming distances the slow way: Python counts the ones of each XOR."""
    return [sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(row, q)) for row in np.atleast_2d(words)]


def test_hamming_counts_the_differing_bits():
    words = np.array([[0b0000], [0b1011], [2**64 - 1], [0b0001]], dtype=np.uint64)
    ids, d = HammingScan(word_major(words)).search(np.zeros(1, np.uint64), 4)
    assert ids.tolist() == [0, 3, 1, 2] and d.tolist() == [0, 1, 3, 64]
    two_words = np.array([[1, 3], [0, 0], [2**64 - 1, 2**64 - 1]], dtype=np.uint64)
    ids, d = HammingScan(word_major(two_words)).search(np.array([0, 0], dtype=np.uint64), 3)
    assert ids.tolist() == [1, 0, 2] and d.tolist() == [0, 3, 128]
    # every bit of every word counts, whatever its byte: faiss compares the words as bytes
    rng = np.random.default_rng(0)
    many = rng.integers(0, 2**63, (1000, 4), dtype=np.uint64)
    q = many[7] ^ np.uint64(5)
    ids, d = HammingScan(word_major(many)).search(q, 1000)
    assert d.tolist() == [counted(many[i], q)[0] for i in ids] == sorted(counted(many, q))


def test_the_hamming_top_k_is_exact_and_breaks_ties_by_the_smaller_id():
    rng = np.random.default_rng(1)
    few_values = rng.integers(0, 4, (5000, 2), dtype=np.uint64)  # distances 0-4: ties everywhere
    spread = rng.integers(0, 2**63, (5000, 4), dtype=np.uint64)
    for words in (few_values, spread):
        scan = HammingScan(word_major(words))
        for q in (words[0], words[4321] ^ np.uint64(6)):
            full = np.asarray(counted(words, q))
            for k in (1, 10, 100, 5000, 6000):
                ids, d = scan.search(q, k)
                assert ids.tolist() == topk_ties_by_id(full, k).tolist()
                assert d.tolist() == full[ids].tolist()
        # many queries at once give each one's answer
        ids, d = scan.search(words[[0, 4321]], 10)
        assert ids.shape == d.shape == (2, 10) and ids[1].tolist() == scan.search(words[4321], 10)[0].tolist()


def test_ties_are_broken_by_the_smaller_id():
    d = np.array([5, 1, 3, 1, 3, 0, 3])
    assert topk_ties_by_id(d, 1).tolist() == [5]
    assert topk_ties_by_id(d, 3).tolist() == [5, 1, 3]
    assert topk_ties_by_id(d, 5).tolist() == [5, 1, 3, 2, 4]  # the three 3s: ids 2, 4, 6 -> 2 and 4
    assert topk_ties_by_id(d, 99).tolist() == [5, 1, 3, 2, 4, 6, 0]


def test_brute_force_on_points_you_can_check():
    db = np.array([[0, 0], [3, 4], [1, 0], [0, 2]], dtype=np.float32)
    ids, dists = BruteForce(db).search(np.array([[0, 0]]), 3)
    assert ids.tolist() == [[0, 2, 3]] and np.allclose(dists, [[0, 1, 2]])
    ids, dists = BruteForce(db, "angular").search(np.array([[1, 0]]), 2)
    assert ids[0, 0] == 2 and np.isclose(dists[0, 0], 0, atol=1e-3)  # same direction: angular distance 0
    assert np.isclose(dists[0, 1], np.sqrt(2 - 2 * 0.6), atol=1e-3)  # (3, 4) at cos 0.6: sqrt(2 - 2 cos)


@pytest.mark.parametrize("d, n", [(12, 5), (400, 6)])  # the full eigh path, and the randomized one
def test_pca_matches_an_svd(d, n):
    rng = np.random.default_rng(0)
    scales = np.geomspace(50, 0.5, d)
    x = (rng.standard_normal((600, d)) * scales) @ np.linalg.qr(rng.standard_normal((d, d)))[0] + 7
    pca = fit_pca(x, n)
    centred = x - x.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    assert np.allclose(pca.mean, x.mean(0), atol=1e-3)
    assert np.allclose(pca.variance, s[:n] ** 2 / len(x), rtol=1e-3)
    # components match up to sign
    assert np.allclose(np.abs(np.sum(pca.components * vt[:n].T, axis=0)), 1, atol=1e-3)
    assert np.isclose(pca.total_variance, (s ** 2).sum() / len(x), rtol=1e-4)
    y = pca.project(x)
    assert np.allclose(y.mean(0), 0, atol=1e-2) and y.shape == (600, n)


def test_itq_bits_are_deterministic_and_keep_more_than_a_random_rotation():
    rng = np.random.default_rng(1)
    codes = (rng.standard_normal((2000, 64)) * np.linspace(3, 0.1, 64)).astype(np.float32)
    mean, proj = fit_binariser(codes, 64, seed=0)
    again = fit_binariser(codes, 64, seed=0)
    assert np.array_equal(proj, again[1])
    words = binarise(codes, mean, proj)
    assert words.shape == (2000, 1) and words.dtype == np.uint64
    # ITQ's aim: the sign of the rotated code is close to the rotated code itself
    v = (codes - mean) @ proj
    loss_itq = np.square(np.sign(v) - v / np.abs(v).mean()).mean()
    rot = np.linalg.qr(rng.standard_normal((64, 64)))[0]
    w = (codes - mean) @ fit_pca(codes, 64).components @ rot
    loss_random = np.square(np.sign(w) - w / np.abs(w).mean()).mean()
    assert loss_itq < loss_random


# ---- exactness of the pixel search ----------------------------------------------------------

def brute_force_pixels(pixels, q, k):
    flat = pixels.reshape(len(pixels), -1)
    d2 = squared_distances(flat, np.arange(len(flat)), q.reshape(-1))
    ids = topk_ties_by_id(d2, k)
    return ids, np.sqrt(d2[ids]) / 255


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_search_is_exact_with_ties(tmp_path, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    noisy = np.clip(base[rng.integers(0, 40, 300)].astype(int) + rng.integers(-20, 21, (300, 32, 32, 3)), 0, 255)
    pixels = np.concatenate([base, noisy.astype(np.uint8), base[:10], base[:10]])  # exact duplicates: ties
    data = BuildInput(pixels, np.zeros((len(pixels), 4), np.float32), seed=seed)
    PixelSpace.build(data, tmp_path)
    space = PixelSpace.load(LoadInput(tmp_path, len(pixels), pixels, data.codes), {})
    for q in list(base[:10]) + list(rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)):
        for k in (1, 5, 12):
            ids, dists = space.search(q, k)
            want_ids, want_dists = brute_force_pixels(pixels, q, k)
            assert ids.tolist() == want_ids.tolist()
            assert np.allclose(dists, want_dists)


def test_the_shared_pixel_projection_is_each_space_s_own_bit_for_bit(tmp_path):
    from imgsearch.spaces.pca import PcaSpace
    from imgsearch.spaces.pixel import SLACK, bound_blocks

    pixels = np.random.default_rng(3).integers(0, 256, (700, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "work").mkdir()
    on_disk = BuildInput(pixels, np.zeros((700, 4), np.float32), scratch=tmp_path / "work")
    in_memory = BuildInput(pixels, np.zeros((700, 4), np.float32))
    assert on_disk.pixel_projection_if_made() is None  # nothing made until a space asks
    for data, out in ((on_disk, tmp_path / "a"), (in_memory, tmp_path / "b")):
        out.mkdir()
        PixelSpace.build(data, out)
        PcaSpace.build(data, out)
    pca = on_disk.pixel_pca
    projected, totals = on_disk.pixel_projection
    assert on_disk.pixel_projection_if_made() is projected
    assert np.array_equal(projected, pca.project(pixels)) and np.array_equal(projected, in_memory.pixel_projection[0])
    centred = pixels.reshape(700, -1).astype(np.float64) - pca.mean
    assert np.allclose(totals, (centred ** 2).sum(1), rtol=1e-12)
    # what each space built from it is what it computed on its own before the projection was shared
    with np.load(tmp_path / "a" / layout.PCA) as a:
        assert np.array_equal(a["projected"], pca.project(pixels) / np.float32(255.0))
    # the bound as the pixel space computed it from the pixels before, written out again
    flat, basis32 = pixels.reshape(700, -1), pca.components.astype(np.float32)
    parts = []
    for s in range(0, 700, 256):
        c = flat[s:s + 256].astype(np.float64) - pca.mean
        y = (c.astype(np.float32) @ basis32).astype(np.float64)
        total = np.einsum("ij,ij->i", c, c)
        rows = [np.column_stack([y[:, :m], np.sqrt(np.maximum(total - np.einsum("ij,ij->i", y[:, :m], y[:, :m]), 0.0))])
                for m in (32, 256)]
        parts.append([*(r.astype(np.float32) for r in rows), (total * (1.0 - SLACK)).astype(np.float32)])
    own = [np.concatenate(p) for p in zip(*parts)]
    assert all(np.array_equal(a, b) for a, b in zip(own, map(np.concatenate, zip(*bound_blocks(
        pixels, pca.mean, pca.components, 32)))))  # the update's path, which projects only new rows
    for folder in ("a", "b"):
        with np.load(tmp_path / folder / layout.PIXEL_BOUND) as b:
            for key, want in zip(("coarse", "fine", "totals"), own):
                assert np.array_equal(b[key], want), (folder, key)


# ---- the four spaces in an index -------------------------------------------------------------

@pytest.mark.numeric
def test_every_space_finds_an_item_itself_at_distance_zero(index_dir, collection):
    index = Index.load(index_dir)
    assert list(index.spaces) == ["pixel", "pca", "code", "bits"]
    res = index.search(17, k=10, spaces=list(index.spaces), exclude_self=False)
    x = index.pixels[17].reshape(-1).astype(np.float64) / 255
    pca = index.spaces["pca"].pca
    # pca: the stored projection and the query's were computed in different blocks of rows: each of the
    # 256 coordinates is a float32 dot product over 3,072 pixels, |x - mean| . |component| <= ||x - mean||.
    bound = 2 * np.sqrt(pca.n_components) * dot_slack(x.size, np.linalg.norm(x - pca.mean / 255))
    code = np.asarray(index.codes[17], dtype=np.float64)
    bits = index.spaces["bits"]
    margins = np.abs((code - bits.mean) @ bits.projection)
    slack = {"pixel": 0.0,  # uint8 pixels compared exactly
             "pca": bound,
             "code": angular_slack(code.size),
             # the query's code is encoded again: a bit may flip only where its projection is within the
             # encoder's float noise (1e-4 of the code's size, as test_model allows) of zero
             "bits": float((margins < 1e-4 * np.linalg.norm(code) * np.abs(bits.projection).sum(0)).sum())}
    for name, hits in res.hits.items():
        # other items may tie with it (the tiny model's 64 bits can coincide): it is among the nearest
        nearest = [h for h in hits if h.distance <= slack[name]]
        assert hits[0].distance <= slack[name] and 17 in [h.id for h in nearest], (name, hits[:3], slack[name])
        assert hits[0].label == collection.label_name(17)
    assert index.spaces["bits"].format_distance(res.hits["bits"][1].distance).endswith(" bits")


def test_bits_distances_are_whole_bits_and_match_a_recount(index_dir):
    index = Index.load(index_dir)
    bits = index.spaces["bits"]
    res = index.search(4, k=8, spaces=["bits"])
    words = bits.embed(Query(index.pixels[4], index.encode))
    for h in res.hits["bits"]:
        recount = sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(bits.columns[:, h.id], words))
        assert h.distance == recount
    assert [h.distance for h in res.hits["bits"]] == sorted(h.distance for h in res.hits["bits"])


def test_pca_space_agrees_with_brute_force_on_its_projection(index_dir):
    index = Index.load(index_dir)
    pca = index.spaces["pca"]
    q = index.pixels[33]
    ids, dists = pca.search(pca.embed(Query(q, index.encode)), 5)
    d = np.linalg.norm(pca.projected - pca.embed(Query(q, index.encode)), axis=1)
    assert ids.tolist() == np.argsort(d, kind="stable")[:5].tolist()
    rebuilt = pca.reconstruct(q)
    assert rebuilt.shape == (32, 32, 3) and rebuilt.dtype == np.uint8
    # 60 images span at most 60 dimensions: 256 components rebuild them almost exactly
    assert np.abs(rebuilt.astype(int) - q).mean() < 2


def test_bits_width_is_chosen_at_build_time(tmp_path, collection, checkpoint):
    with pytest.raises(BuildError, match="The bits space cannot be built: .*has 64"):  # the tiny model's 64-d code
        build_index(collection, checkpoint, tmp_path / "i", bits=128, maps=False, progress=False)
    build_index(collection, checkpoint, tmp_path / "j", spaces=["pixel", "bits"], bits=64, maps=False, progress=False)
    index = Index.load(tmp_path / "j")
    assert list(index.spaces) == ["pixel", "bits"] and index.spaces["bits"].columns.shape == (1, 60)
    with pytest.raises(ValueError, match="no 'code' space"):
        index.search(0, spaces=["code"])


def angular_order(codes: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: every row by angular distance sqrt(2 - 2 cos) to q, ties to the smaller id."""
    unit = codes / np.linalg.norm(codes, axis=1, keepdims=True)
    d = np.sqrt(np.maximum(2 - 2 * unit @ (q / np.linalg.norm(q)), 0))
    return np.lexsort((np.arange(len(d)), d)), d


@pytest.mark.numeric
def test_the_code_space_re_ranks_the_projected_trees_answer_on_the_full_codes():
    # Codes of rank 40 in 256 dimensions: the trees' 64 directions hold all of them, so with every node
    # visited the candidates are the true nearest, and the re-rank must give brute force's answer.
    rng = np.random.default_rng(3)
    codes = (rng.standard_normal((2000, 40)) @ rng.standard_normal((40, 256))).astype(np.float32)
    space = annoy_code_search(codes, n_trees=4, search_k=10**6)
    assert space.directions.shape == (256, 64)
    assert np.allclose(space.directions.T @ space.directions, np.eye(64), atol=1e-4)
    assert sorted(space.ann_rows) == list(range(2000))  # every row is one Annoy item, in locality order
    row = space.ann_rows[7]
    unit = codes[row] / np.linalg.norm(codes[row])
    assert np.allclose(space.ann.get_item_vector(7), unit @ space.directions, atol=1e-5)
    for q in (codes[5], codes[9] + 0.1 * codes[11], codes[1:4].sum(0)):
        for k in (1, 10, 120):  # 120: more than the 50 candidates, so the trees are asked for k
            ids, dists = space.search(q, k)
            assert exact_up_to_ties(codes, q, ids, dists, k)


def exact_up_to_ties(codes: np.ndarray, q: np.ndarray, ids: np.ndarray, dists: np.ndarray, k: int) -> bool:
    """ids and dists are brute force's k nearest up to distance ties within float32 rounding: each reported
    distance is the item's own, and the k reported are the k smallest (a near-tie may swap which item is kth).
    Compared as squared angular distances, 2 - 2 cos, whose float32 rounding is a few eps times sqrt(dim)."""
    _, d = angular_order(codes, q)
    tol = 8 * np.finfo(np.float32).eps * np.sqrt(codes.shape[1])
    return (len(ids) == k and len(set(ids.tolist())) == k
            and np.allclose(dists ** 2, d[ids] ** 2, rtol=0, atol=tol)
            and np.allclose(np.sort(d[ids] ** 2), np.sort(d ** 2)[:k], rtol=0, atol=tol))


@pytest.mark.numeric
@pytest.mark.parametrize("structure, everything", [("faiss", {"probes": 10**6}), ("faiss_hnsw", {"probes": 10**4})])
def test_faiss_structures_re_rank_on_the_full_codes_and_a_full_scan_is_exact(structure, everything):
    # The rank-40 codes again: the 64 directions hold them whole, so with every list scanned (or the whole
    # graph walked) the candidates are the true nearest, and the re-rank must give brute force's neighbours.
    rng = np.random.default_rng(3)
    codes = (rng.standard_normal((2000, 40)) @ rng.standard_normal((40, 256))).astype(np.float32)
    found = served_code_search(codes, structure=structure, probes=16)
    assert found.directions.shape == (256, 64) and found.index.ntotal == 2000 and list(found.rows) == list(range(2000))
    if structure == "faiss":
        assert found.index.nlist == 45 and found.section["settings"]["lists"] == 45  # sqrt(2000) lists
    for q in (codes[5], codes[9] + 0.1 * codes[11], codes[1:4].sum(0)):
        for k in (1, 10, 120):  # 120: more than the 50 candidates, so the structure is asked for k
            ids, dists = found.search(q, k, **everything)
            assert exact_up_to_ties(codes, q, ids, dists, k)
        order, _ = angular_order(codes, q)
        assert len(set(found.search(q, 10)[0]) & set(order[:10])) >= 8  # 16 probes (of 45 lists): most found


def test_a_query_scans_only_the_lists_nearest_it():
    # Four tight clusters, one list each (sqrt(20) lists): with one list probed, a query near a cluster's
    # centre finds only that cluster's items; with two, the second-nearest cluster joins.
    centres = np.array([[10, 0, 0, 0], [0, 10, 0, 0], [0, 0, 10, 0], [0, 0, 0, 10]], dtype=np.float32)
    rng = np.random.default_rng(0)
    cluster = np.tile(np.arange(4), 5)  # rows 0, 4, 8, ... in cluster 0
    codes = centres[cluster] + rng.uniform(-1, 1, (20, 4)).astype(np.float32)
    lists = served_code_search(codes, structure="faiss", probes=1)
    assert lists.index.nlist == 4
    q = np.array([9, 3, 0, 0], dtype=np.float32)
    assert sorted(lists.search(q, 20)[0]) == [0, 4, 8, 12, 16]  # cluster 0 only
    assert sorted(lists.search(q, 20, probes=2)[0]) == [r for r in range(20) if cluster[r] in (0, 1)]


class ExactToy(CodeIndex):
    """A toy structure: every code in one .npy, searched by brute force."""
    name = "toy"
    description = "the code by brute force, a toy"
    options = ("scale",)
    checks = {"scale": lambda x: x == 1}

    def __init__(self, codes):
        self.codes = codes

    @classmethod
    def build(cls, data, directory: Path, *, scale: int = 1) -> dict:
        np.save(directory / "toy.npy", unit_rows(data.codes))
        return {"metric": METRIC, "dims": int(data.codes.shape[1]), "files": ["codes.npy", "toy.npy"],
                "settings": {"structure": cls.name, "scale": scale}}

    @classmethod
    def load(cls, data, section):
        return cls(np.load(data.directory / "toy.npy"))

    def search(self, vector, k):
        return rerank(self.codes, np.arange(len(self.codes)), unit_rows(vector)[0], k)


def test_a_registered_code_index_is_built_recorded_loaded_and_searched_by_name(tmp_path, collection, checkpoint):
    register_code_index(ExactToy)
    try:
        out = tmp_path / "idx"
        build_index(collection, checkpoint, out, spaces=["code"], code_index="toy", maps=False, progress=False)
        code = read_meta(out)["spaces"]["code"]
        assert code["settings"] == {"structure": "toy", "scale": 1} and code["files"] == ["codes.npy", "toy.npy"]
        index = Index.load(out)
        assert isinstance(index.spaces["code"].structure, ExactToy)
        assert index.spaces["code"].description == "the code by brute force, a toy"
        assert index.search(7, k=3, spaces=["code"], exclude_self=False).hits["code"][0].id == 7  # its own nearest
    finally:
        del CODE_INDEXES["toy"]
    with pytest.raises(IndexLoadError, match="names the structure 'toy', which this version does not know"):
        Index.load(out)


def trees_in_an_older_layout(index_dir: Path, *, projected: bool):
    """Rewrite an index's code space as older builds wrote it, and load it: items in row order and no
    code_ann_rows.npy; with projected False also trees over the full codes, angular, no directions file."""
    meta = json.loads((index_dir / layout.META).read_text())
    codes = np.load(index_dir / layout.CODES)
    code = meta["spaces"]["code"]
    directions = np.load(index_dir / layout.ANNOY_DIRECTIONS) if projected else None
    dropped = [layout.ANNOY_ROWS] if projected else [layout.ANNOY_ROWS, layout.ANNOY_DIRECTIONS]
    for name in (layout.ANNOY, *dropped):
        (index_dir / name).unlink()
    build_annoy(codes, 4, directions=directions, path=index_dir / layout.ANNOY).unload()
    for key in ("item_order", "outside_trees", "removed_from_trees", *(() if projected else ("ann_dims", "candidates"))):
        del code["settings"][key]
    code["settings"]["ann_bytes"] = (index_dir / layout.ANNOY).stat().st_size
    code["files"] = [name for name in code["files"] if name not in dropped]
    (index_dir / layout.META).write_text(json.dumps(meta))
    reseal(index_dir)
    return codes, Index.load(index_dir).spaces["code"].structure


@pytest.mark.numeric
def test_an_index_whose_trees_hold_the_full_codes_still_loads_and_searches(annoy_copy_of):
    # The layout before the projection: codes.ann angular over the codes themselves, no directions file.
    codes, space = trees_in_an_older_layout(annoy_copy_of, projected=False)
    assert space.directions is None
    ids, dists = space.search(codes[3], 10, search_k=10**6)
    assert exact_up_to_ties(codes, codes[3], ids, dists, 10)


@pytest.mark.numeric
def test_an_index_whose_trees_hold_the_items_in_row_order_still_loads_and_searches(annoy_copy_of):
    # The layout before the locality order: item i is row i, and no code_ann_rows.npy says so.
    codes, space = trees_in_an_older_layout(annoy_copy_of, projected=True)
    assert space.ann_rows is None and space.directions is not None
    for q in (codes[3] + 0.1 * codes[4], codes[-1] + 0.1 * codes[0]):
        ids, dists = space.search(q, 10, search_k=10**6)
        assert exact_up_to_ties(codes, q, ids, dists, 10)


def test_locality_order_keeps_near_points_together():
    # Four tight clusters far apart, shuffled: halving at medians gives each cluster a run of its own.
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [100, 0], [0, 100], [100, 100]], dtype=np.float32)
    labels = rng.permutation(np.repeat(np.arange(4), 8))
    points = centres[labels] + rng.standard_normal((32, 2)).astype(np.float32)
    order = locality_order(points, leaf=8)
    assert sorted(order) == list(range(32))
    runs = labels[order].reshape(4, 8)
    assert (runs == runs[:, :1]).all() and len(set(runs[:, 0])) == 4
    assert (locality_order(points, leaf=8) == order).all()  # deterministic
    assert (locality_order(points, leaf=32) == np.arange(32)).all()  # one cell: left as it is


def test_a_version_one_index_is_refused_with_how_to_rebuild(copy_of):
    copy = copy_of
    meta = json.loads((copy / layout.META).read_text())
    meta["format"] = "imgsearch-index-v1"
    (copy / layout.META).write_text(json.dumps(meta))
    with pytest.raises(IndexLoadError, match="older imgsearch.*rebuild it with `imgsearch build-index`"):
        Index.load(copy)


@pytest.mark.parametrize("name", ["pixel_bound.npz", "pca.npz", "bits.npz", "code_ann_directions.npy",
                                  "code_faiss.index", "code_faiss_rows.npy", "codes.ann", "code_ann_rows.npy"])
def test_a_damaged_space_file_is_one_sentence(request, name):
    copy = request.getfixturevalue("faiss_copy_of" if name.startswith("code_faiss") else "copy_of")
    (copy / name).write_bytes(b"garbage")
    with pytest.raises(IndexLoadError, match=f"{name}.*missing or corrupt.*rebuild it"):
        Index.load(copy)


# ---- the registry --------------------------------------------------------------------------

class BrightnessSpace(Space):
    """A toy fifth space: mean brightness, one number per image."""
    name = "brightness"
    title = "Brightness space"
    description = "mean brightness, a toy"
    metric = "absolute difference of mean brightness"

    def __init__(self, values):
        self.values = values

    @classmethod
    def build(cls, data, directory: Path) -> dict:
        np.save(directory / "brightness.npy", data.pixels.reshape(len(data.pixels), -1).mean(1))
        return {"metric": cls.metric, "dims": 1, "files": ["brightness.npy"], "settings": {}}

    @classmethod
    def load(cls, data, section):
        return cls(np.load(data.directory / "brightness.npy"))

    def embed(self, query):
        return query.pixels.mean()

    def embed_many(self, pixels, codes):
        return pixels.reshape(len(pixels), -1).mean(1)

    def search(self, vector, k):
        d = np.abs(self.values - vector)
        ids = topk_ties_by_id(d, k)
        return ids, d[ids]


@pytest.fixture
def toy_space():
    register_space(BrightnessSpace)
    yield BrightnessSpace
    del SPACES["brightness"]


def test_a_registered_space_shows_up_in_build_search_cli_and_app(toy_space, tmp_path, collection, checkpoint,
                                                                  capsys, monkeypatch):
    out = tmp_path / "idx"
    build_index(collection, checkpoint, out, maps=False, progress=False)
    index = Index.load(out)
    assert "brightness" in index.spaces and index.meta["spaces"]["brightness"]["files"] == ["brightness.npy"]
    res = index.search(7, k=4, spaces=["brightness", "pixel"])
    assert list(res.hits) == ["brightness", "pixel"] and len(res.hits["brightness"]) == 4

    from imgsearch.cli import main
    query = tmp_path / "q.png"
    from PIL import Image
    Image.fromarray(index.pixels[7]).save(query)
    assert main(["search", str(query), "--index", str(out), "--spaces", "brightness,bits", "--json", "-k", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == ["brightness", "bits"] and len(printed["brightness"]) == 3

    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("IMGSEARCH_INDEX", str(out))
    app = AppTest.from_file(str(Path(__file__).parent.parent / "app.py"), default_timeout=60).run()
    assert "brightness" in app.multiselect(key="spaces").options or "Brightness space" in app.multiselect(key="spaces").options
    app.multiselect(key="spaces").set_value(["pixel", "brightness", "bits"]).run()
    app.number_input(key="item_number").set_value(7).run()
    assert not app.exception
    heads = [h for el in app.html for h in re.findall(r'class="ims-head"[^>]*>(.*?)</div>', el.value)]  # HTML grids
    assert [h.split(":")[0] for h in heads] == ["Pixel space", "Brightness space", "Bits space"]


class GoneServerSpace(BrightnessSpace):
    """A space whose server went away after the index was loaded (as a Milvus server may)."""
    name = "gone"
    title = "Gone space"

    def search(self, vector, k):
        raise SpaceUnavailable("the server at http://127.0.0.1:9 refused the connection")


def test_a_space_whose_server_is_gone_costs_its_own_column_not_the_search(tmp_path, collection, checkpoint,
                                                                          capsys, monkeypatch):
    register_space(GoneServerSpace)
    try:
        out = tmp_path / "idx"
        build_index(collection, checkpoint, out, maps=False, progress=False)
        index = Index.load(out)
        res = index.search(7, k=4, spaces=["pixel", "gone"])
        assert len(res.pixel) == 4 and res.hits["gone"] == [] and list(res.unavailable) == ["gone"]
        assert res.unavailable["gone"].startswith("The gone space cannot be reached: the server at")

        from imgsearch.cli import main
        from PIL import Image
        query = tmp_path / "q.png"
        Image.fromarray(index.pixels[7]).save(query)
        assert main(["search", str(query), "--index", str(out), "--spaces", "pixel,gone", "-k", "3"]) == 1
        printed = capsys.readouterr()
        assert "pixel space" in printed.out and printed.err.startswith("error: The gone space cannot be reached")

        from streamlit.testing.v1 import AppTest
        monkeypatch.setenv("IMGSEARCH_INDEX", str(out))
        app = AppTest.from_file(str(Path(__file__).parent.parent / "app.py"), default_timeout=60).run()
        app.multiselect(key="spaces").set_value(["pixel", "gone"]).run()
        app.number_input(key="item_number").set_value(7).run()
        assert not app.exception
        assert any("cannot be reached" in w.value for w in app.warning)
        heads = [h for el in app.html for h in re.findall(r'class="ims-head"[^>]*>(.*?)</div>', el.value)]
        assert heads[0].startswith("Pixel space") and heads[1] == "Gone space: unavailable"
    finally:
        del SPACES["gone"]
