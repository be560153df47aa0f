"""Streaming, resumable and incremental builds (ingest.py, build_index(update=True)) on small folders."""
import json
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from conftest import make_image, write_collection

pytestmark = pytest.mark.numeric  # codes encoded in batches, processes and threads
from imgsearch import layout
from imgsearch.data import load_folder
from imgsearch.index import assemble, build_index
from imgsearch.integrity import IndexLoadError, read_meta
from imgsearch.publish import build_lock, BuildBusyError, resolve
from imgsearch.ingest import ingest, scan_folder
from imgsearch.model import load_checkpoint


def stores(out) -> dict:
    d = resolve(out)
    return {"codes": np.load(d / layout.CODES), "pixels": np.load(d / layout.PIXELS),
            "labels": np.load(d / layout.LABELS), "paths": json.loads((d / layout.PATHS).read_text())}


def by_path(s: dict) -> dict:
    return {p: (s["codes"][i], s["pixels"][i], s["labels"][i]) for i, p in enumerate(s["paths"])}


def test_a_folder_built_in_batches_equals_the_folder_read_whole(tmp_path, collection_dir, checkpoint):
    # batches of 16: several batches, so they are decoded and encoded by worker processes
    build_index(str(collection_dir), checkpoint, tmp_path / "batched", batch_size=16, maps=False, progress=False)
    build_index(load_folder(collection_dir, progress=False), checkpoint, tmp_path / "whole", maps=False,
                progress=False)
    a, b = stores(tmp_path / "batched"), stores(tmp_path / "whole")
    assert a["paths"] == b["paths"] and len(a["paths"]) == 60
    assert (a["pixels"] == b["pixels"]).all() and (a["labels"] == b["labels"]).all()
    assert np.allclose(a["codes"], b["codes"], atol=1e-5)
    meta = read_meta(tmp_path / "batched")
    assert meta["ingest"].pop("seconds") > 0
    assert meta["ingest"] == {"batches": 4, "resumed_batches": 0, "batch_size": 16, "items_read": 60}
    assert not list((tmp_path / "batched.builds").glob("*.work"))  # published: the work folder is gone


KILLED_BUILD = """
import os, signal, sys
from imgsearch import ingest, index
real = ingest.local_batches
def dies_after(stop):
    def batches(*args, **kw):
        for i, batch in enumerate(real(*args, **kw)):
            if i == stop:
                os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of any kind, as a power cut
            yield batch
    return batches
index.build_index(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=8, maps=False, progress=False,
                  batches=dies_after(int(sys.argv[4])))
"""


def test_a_killed_build_resumes_from_its_last_batch_and_ends_as_a_clean_build(tmp_path, collection_dir, checkpoint):
    out = tmp_path / "index"
    killed = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(collection_dir), str(checkpoint), str(out), "3"])
    assert killed.returncode == -9 and not out.exists()  # nothing published
    # Its worker processes died with it, and with that the build lock they had inherited is free.
    deadline = time.time() + 10
    while True:
        try:
            with build_lock(out, wait=False):
                break
        except BuildBusyError:
            assert time.time() < deadline, "a killed build's worker still holds the build lock"
            time.sleep(0.2)
    work = list((tmp_path / "index.builds").glob("*.work"))
    assert len(work) == 1 and len(list(work[0].glob("batch-*.npz"))) == 3

    summary = build_index(str(collection_dir), checkpoint, out, batch_size=8, maps=False, progress=False)
    meta = read_meta(out)
    assert meta["ingest"]["resumed_batches"] == 3 and meta["ingest"]["items_read"] == 60 - 3 * 8
    build_index(str(collection_dir), checkpoint, tmp_path / "clean", batch_size=8, maps=False, progress=False)
    assert summary["items"] == 60
    for name in (layout.CODES, layout.PIXELS, layout.LABELS, layout.PATHS):  # bit for bit
        assert meta["checksums"][name] == read_meta(tmp_path / "clean")["checksums"][name], name


def test_a_build_with_other_inputs_does_not_resume_a_stale_work_folder(tmp_path, collection_dir, checkpoint):
    out = tmp_path / "index"
    subprocess.run([sys.executable, "-c", KILLED_BUILD, str(collection_dir), str(checkpoint), str(out), "2"])
    build_index(str(collection_dir), checkpoint, out, batch_size=16, maps=False, progress=False)  # other batches
    assert read_meta(out)["ingest"]["resumed_batches"] == 0
    assert not list((tmp_path / "index.builds").glob("*.work"))


def touch_later(path):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_update_encodes_only_new_and_changed_files(tmp_path, checkpoint):
    data = write_collection(tmp_path / "data", per_class=10)
    out = tmp_path / "index"
    build_index(str(data), checkpoint, out, batch_size=8, maps=False, progress=False)
    for i in range(3):  # three new images, one in a new class
        folder = data / ("blue" if i < 2 else "purple")
        folder.mkdir(exist_ok=True)
        Image.fromarray(make_image(i % 3, seed=900 + i)).save(folder / f"new{i}.png")
    Image.fromarray(make_image(0, seed=777)).save(data / "red" / "000.png")  # changed content
    touch_later(data / "red" / "000.png")
    (data / "green" / "001.png").unlink()
    (data / "green" / "002.png").unlink()

    summary = build_index(str(data), checkpoint, out, update=True, batch_size=8, maps=False, progress=False)
    u = read_meta(out)["update"]
    assert (u["added"], u["changed"], u["removed"], u["unchanged"], u["items"]) == (3, 1, 2, 27, 31)
    assert summary["update"] == u and read_meta(out)["ingest"]["items_read"] == 4  # only new and changed ones
    assert read_meta(out)["classes"] == ["blue", "green", "purple", "red"]

    build_index(str(data), checkpoint, tmp_path / "clean", maps=False, progress=False)
    updated, clean = by_path(stores(out)), by_path(stores(tmp_path / "clean"))
    assert updated.keys() == clean.keys() and len(updated) == 31
    for path, (code, pixels, label) in clean.items():
        assert np.allclose(updated[path][0], code, atol=1e-5) and (updated[path][1] == pixels).all()
        assert updated[path][2] == label, path  # labels follow the new class list
    assert str(data / "red" / "000.png") in updated  # re-encoded: its pixels are the new picture's
    assert (updated[str(data / "red" / "000.png")][1] == np.asarray(Image.open(data / "red" / "000.png"))).all()


def test_update_without_changes_reencodes_nothing(tmp_path, collection_dir, checkpoint):
    out = tmp_path / "index"
    build_index(str(collection_dir), checkpoint, out, maps=False, progress=False)
    build_index(str(collection_dir), checkpoint, out, update=True, maps=False, progress=False)
    meta = read_meta(out)
    assert meta["update"]["unchanged"] == 60 and meta["ingest"]["items_read"] == 0
    assert meta["update"]["added"] == meta["update"]["removed"] == meta["update"]["changed"] == 0


@pytest.mark.parametrize("other, words", [("collection", "was built from"), ("model", "its codes cannot be reused")])
def test_update_refuses_another_collection_or_model(tmp_path, collection_dir, checkpoint, other, words):
    from conftest import tiny_checkpoint

    out = tmp_path / "index"
    build_index(str(collection_dir), checkpoint, out, maps=False, progress=False)
    data, model = collection_dir, checkpoint
    if other == "collection":
        data = write_collection(tmp_path / "other", per_class=2)
    else:
        model = tiny_checkpoint(tmp_path / "other.pt", seed=5)
    with pytest.raises(IndexLoadError, match=words):
        build_index(str(data), model, out, update=True, maps=False, progress=False)


def test_update_of_an_index_without_file_stats_says_to_rebuild(tmp_path, collection_dir, checkpoint):
    out = tmp_path / "index"
    build_index(str(collection_dir), checkpoint, out, maps=False, progress=False)
    meta_path = resolve(out) / layout.META
    meta = json.loads(meta_path.read_text())
    del meta["checksums"][layout.FILE_STATS]  # as an index of the previous version records it
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IndexLoadError, match="without --update"):
        build_index(str(collection_dir), checkpoint, out, update=True, maps=False, progress=False)


def ingest_peak(root, checkpoint, work, batch_size) -> int:
    """Peak traced memory of reading, encoding and writing the item files of a folder."""
    source = scan_folder(root)
    model, info = load_checkpoint(checkpoint)
    (work / "out").mkdir(parents=True)
    tracemalloc.start()
    try:
        ingest(source, model, work / "batches", batch_size=batch_size, progress=False)
        assemble(work / "out", work / "batches", source, None, source, batch_size, 64)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_worker_processes_encode_what_this_process_encodes(tmp_path, collection_dir, checkpoint):
    from imgsearch.ingest import decode_files, encoding_workers, local_batches
    from imgsearch.model import encode_pixels

    source = scan_folder(collection_dir)
    model, _ = load_checkpoint(checkpoint)
    pixels, ok, _ = decode_files(source.paths)
    # batch by batch, as the workers encode; torch's threads have run here before the workers are forked
    here = np.concatenate([encode_pixels(model, pixels[s:s + 16][ok[s:s + 16]]) for s in range(0, len(ok), 16)])
    with encoding_workers(model, count=2) as pool:
        assert pool is not None
        batches = list(local_batches(source, model, [3, 0, 1, 2], 16, pool))
    assert [b[0] for b in batches] == [3, 0, 1, 2]  # in the order asked for
    batches.sort(key=lambda b: b[0])
    assert (np.concatenate([b[3] for b in batches]) == pixels[ok]).all()
    assert np.array_equal(np.concatenate([b[4] for b in batches]), here)  # one thread or two: bit for bit
    with encoding_workers(model, count=1) as pool:
        assert pool is None  # one core: nothing to run beside this process, which encodes itself


def test_memory_stays_flat_when_the_collection_grows(tmp_path, checkpoint):
    small = write_collection(tmp_path / "small", per_class=40)  # 120 images
    large = write_collection(tmp_path / "large", per_class=200)  # 600 images: 1.8 MB of pixels
    peaks = [ingest_peak(root, checkpoint, tmp_path / root.name, batch_size=30) for root in (small, large)]
    # What may grow with the collection is its list of paths (a few hundred bytes an item), never its pictures:
    # each extra image adds far less than its own 3,072 bytes of pixels, and the whole peak stays below them.
    per_extra_image = (peaks[1] - peaks[0]) / (600 - 120)
    assert per_extra_image < 3072 / 2, peaks
    assert peaks[1] < 600 * 3072, peaks


def angular(codes: np.ndarray, q: np.ndarray) -> np.ndarray:
    unit = codes / np.linalg.norm(codes, axis=1, keepdims=True)
    return np.sqrt(np.maximum(2 - 2 * unit @ (q / np.linalg.norm(q)), 0))


@pytest.mark.parametrize("code_index", ["faiss", "annoy"])
def test_an_update_carries_the_previous_build_over_and_answers_as_exact_search(tmp_path, checkpoint, code_index):
    from imgsearch.search import Index

    data = write_collection(tmp_path / "data", per_class=40)  # 120 images
    out = tmp_path / "index"
    build_index(str(data), checkpoint, out, code_index=code_index, batch_size=32, progress=False)
    first = resolve(out)
    before = Index.load(out)
    Image.fromarray(make_image(1, seed=901)).save(data / "green" / "new0.png")
    Image.fromarray(make_image(2, seed=902)).save(data / "blue" / "new1.png")
    Image.fromarray(make_image(0, seed=903)).save(data / "red" / "003.png")  # changed
    touch_later(data / "red" / "003.png")
    (data / "green" / "005.png").unlink()
    build_index(str(data), checkpoint, out, code_index=code_index, update=True, batch_size=32, progress=False)
    meta, now = read_meta(out), resolve(out)
    assert (meta["update"]["added"], meta["update"]["changed"], meta["update"]["removed"]) == (2, 1, 1)

    code = meta["spaces"]["code"]
    if code_index == "annoy":  # the same trees (one file, two links), with 3 rows outside them and 2 removed items inside
        assert layout.ANNOY_ROWS in code["files"] and os.path.samefile(first / layout.ANNOY, now / layout.ANNOY)
        assert (code["settings"]["outside_trees"], code["settings"]["removed_from_trees"]) == (3, 2)
        assert meta["checksums"][layout.ANNOY] == read_meta(first)["checksums"][layout.ANNOY]
    else:  # the same centres and projection; the 2 old entries removed, the 3 new ones added under new ids
        import faiss
        assert meta["checksums"][layout.ANNOY_DIRECTIONS] == read_meta(first)["checksums"][layout.ANNOY_DIRECTIONS]
        lists = [faiss.read_index(str(d / layout.FAISS_INDEX)) for d in (first, now)]
        centres = [faiss.downcast_index(i.quantizer).reconstruct_n(0, i.nlist) for i in lists]
        assert (centres[0] == centres[1]).all() and (lists[0].ntotal, lists[1].ntotal) == (120, 121)
        rows = np.load(now / layout.FAISS_ROWS)
        assert len(rows) == 123 and (rows < 0).sum() == 2 and sorted(rows[rows >= 0]) == list(range(121))
        assert list(rows[120:]) == [118, 119, 120]  # the new items, the last rows, under ids after the old ones
    for name in ("pixel", "pca", "bits", "code"):
        assert meta["spaces"][name]["settings"]["fitted_in"] == first.name, name
    assert meta["maps"]["kept_from"] == first.name

    index = Index.load(out)
    kept = [before.paths.index(p) for p in index.paths[:meta["update"]["unchanged"]]]
    assert (index.spaces["pca"].projected[:len(kept)] == before.spaces["pca"].projected[kept]).all()
    assert (index.spaces["bits"].columns[:, :len(kept)] == before.spaces["bits"].columns[:, kept]).all()
    for space in ("code", "pixel"):
        assert (index.maps[space][:len(kept)] == before.maps[space][kept]).all()
        assert np.isfinite(index.maps[space]).all() and len(index.maps[space]) == len(index)

    # Every space answers as exact search over what the updated index holds (the code space made exact by
    # scanning every list, or visiting every node).
    flat = index.pixels.reshape(len(index), -1).astype(np.int64)
    everything = {"annoy": {"search_k": 10**6}, "faiss": {"probes": 10**6}}[code_index]
    for q in (0, 50, len(index) - 1):  # a kept item, another, a new one
        ids, _ = index.spaces["code"].search(index.codes[q], 10, **everything)
        d = angular(index.codes, index.codes[q])
        assert np.allclose(np.sort(d[ids]), np.sort(d)[:10], atol=1e-5)
        ids, _ = index.spaces["pixel"].search(index.pixels[q], 10)
        assert list(ids) == list(np.lexsort((np.arange(len(index)), ((flat - flat[q]) ** 2).sum(1)))[:10])
        bits = index.spaces["bits"]
        ids, dist = bits.search(bits.embed_many(None, index.codes[q:q + 1])[0], 10)
        assert list(dist) == sorted(np.bitwise_count(bits.columns ^ bits.columns[:, q:q + 1]).sum(0))[:10]


def test_an_update_past_the_stale_share_builds_the_trees_again(tmp_path, checkpoint):
    data = write_collection(tmp_path / "data", per_class=20)  # 60 images
    out = tmp_path / "index"
    build_index(str(data), checkpoint, out, code_index="annoy", maps=False, progress=False)
    first = resolve(out)
    for i in range(6):  # 10% new
        Image.fromarray(make_image(i % 3, seed=950 + i)).save(data / "red" / f"new{i}.png")
    build_index(str(data), checkpoint, out, code_index="annoy", update=True, maps=False, progress=False)
    code = read_meta(out)["spaces"]["code"]
    assert "fitted_in" not in code["settings"] and code["settings"]["outside_trees"] == 0
    assert not os.path.samefile(first / layout.ANNOY, resolve(out) / layout.ANNOY)
    assert sorted(np.load(resolve(out) / layout.ANNOY_ROWS)) == list(range(66))  # every row, in the trees once


def test_an_update_refuses_a_damaged_file_it_would_carry_over(tmp_path, collection_dir, checkpoint):
    out = tmp_path / "index"
    build_index(str(collection_dir), checkpoint, out, maps=False, progress=False)
    with open(resolve(out) / layout.PCA, "r+b") as f:
        f.seek(200)
        f.write(b"\xff" * 8)
    with pytest.raises(IndexLoadError, match="pca.npz .*missing or corrupt"):
        build_index(str(collection_dir), checkpoint, out, update=True, maps=False, progress=False)


def spaces_peak(tmp_path, n: int) -> int:
    """Peak traced memory of building the pixel and pca spaces over n random images read from disk."""
    from imgsearch.spaces import BuildInput
    from imgsearch.spaces.pca import PcaSpace
    from imgsearch.spaces.pixel import PixelSpace

    rng = np.random.default_rng(n)
    np.save(tmp_path / f"pixels{n}.npy", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    pixels = np.load(tmp_path / f"pixels{n}.npy", mmap_mode="r")
    (tmp_path / f"work{n}").mkdir()
    # the build's work folder takes the projection the two spaces share (BuildInput.pixel_projection)
    data = BuildInput(pixels, rng.standard_normal((n, 64)).astype(np.float32), scratch=tmp_path / f"work{n}")
    data.pixel_pca  # fitted on a sample of at most PCA_FIT_ROWS images, whatever the size: not measured here
    out = tmp_path / f"index{n}"
    out.mkdir()
    tracemalloc.start()
    try:
        PixelSpace.build(data, out)
        PcaSpace.build(data, out)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_spaces_tables_go_to_disk_without_being_held_whole(tmp_path, monkeypatch):
    from imgsearch import tables
    from imgsearch.search import Index  # noqa: F401  (the spaces' modules, imported before measuring)

    monkeypatch.setattr(tables, "BLOCK_ROWS", 64)
    monkeypatch.setattr(tables, "CACHE_ROWS", 64)
    peaks = [spaces_peak(tmp_path, n) for n in (400, 2000)]
    # The fine pixel bound and the pca projections are ~1 KB an item each. What may grow with the
    # collection is the coarse bound kept for writing after them (~136 bytes an item), not the tables.
    per_extra_image = (peaks[1] - peaks[0]) / (2000 - 400)
    assert per_extra_image < 1024 / 2, peaks


def mapped_kb(path) -> int:
    """Resident kB of this process's memory maps of the file at `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):  # a mapping's first line
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


def test_let_go_drops_a_read_only_map_s_pages_and_nothing_else(tmp_path):
    from imgsearch.tables import gather, let_go, row_blocks

    table = np.random.default_rng(0).integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8)  # 12 MB
    np.save(tmp_path / "pixels.npy", table)
    mapped = np.load(tmp_path / "pixels.npy", mmap_mode="r")
    assert int(mapped.sum(dtype=np.int64)) == int(table.sum(dtype=np.int64))
    assert mapped_kb(tmp_path / "pixels.npy") > 11_000  # a whole pass leaves the whole file mapped
    let_go(mapped[10:11])  # one row: its own page, not the table's
    assert mapped_kb(tmp_path / "pixels.npy") > 11_000
    let_go(mapped.reshape(len(mapped), -1)[::-1])  # a view reaches its map through .base, in any order
    assert mapped_kb(tmp_path / "pixels.npy") < 100
    assert (mapped == table).all()  # contents unchanged: the pages come back from the page cache
    let_go(mapped)

    total = sum(int(block.sum(dtype=np.int64)) for _, block in row_blocks(mapped, rows=256))  # 768 KB blocks
    assert total == int(table.sum(dtype=np.int64))
    # Not even the folios that later blocks' faults mapped back over earlier ones (0.8-1.8 MB of them
    # when only each block's own span was let go)
    assert mapped_kb(tmp_path / "pixels.npy") < 256
    sample = np.sort(np.random.default_rng(1).choice(len(table), 1000, replace=False))  # rows all over the file
    assert (gather(mapped, sample) == table[sample]).all() and (gather(table, sample) == table[sample]).all()
    assert mapped_kb(tmp_path / "pixels.npy") < 1024

    copy_on_write = np.load(tmp_path / "pixels.npy", mmap_mode="c")
    copy_on_write[0] = 7  # private pages, which dropping would lose
    in_memory = table.copy()
    let_go(copy_on_write, in_memory, np.empty(0))
    assert (copy_on_write[0] == 7).all() and (in_memory == table).all()


def test_the_build_s_passes_do_not_leave_the_stores_mapped(tmp_path):
    from imgsearch.projection import collection_maps
    from imgsearch.spaces import SPACES, BuildInput
    from imgsearch.spaces.bits import fit_binariser

    rng = np.random.default_rng(5)
    n = 3000  # 9 MB of pixels, 3 MB of codes
    np.save(tmp_path / "pixels.npy", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    np.save(tmp_path / "codes.npy", rng.standard_normal((n, 256)).astype(np.float32))
    data = BuildInput(np.load(tmp_path / "pixels.npy", mmap_mode="r"), np.load(tmp_path / "codes.npy", mmap_mode="r"))
    for name in ("pixel", "pca", "code", "bits"):
        out = tmp_path / name
        out.mkdir()
        SPACES[name].build(data, out)
        # What a pass reads is let go a block at a time; what is left is at most the last block's pages
        # and the neighbourhoods of a few sampled rows, far from the 9 and 3 MB a pass maps.
        assert mapped_kb(tmp_path / "pixels.npy") < 2048, name
        assert mapped_kb(tmp_path / "codes.npy") < 1024, name
    collection_maps(data.codes, data.pixels)
    assert mapped_kb(tmp_path / "pixels.npy") < 2048 and mapped_kb(tmp_path / "codes.npy") < 1024
    # A sample read inside a step, before the step's own passes let go of the whole store: it must not
    # map the store either (at a million codes, the bits' ITQ sample had mapped most of 1 GB).
    fit_binariser(data.codes)
    assert mapped_kb(tmp_path / "codes.npy") < 1024
