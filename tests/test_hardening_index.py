"""Damaged index files and metadata give one sentence, never a crash or a wrong answer;
builds into one --out take turns, clean up after killed builds and prune by what is live."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from imgsearch import layout
from imgsearch.index import build_index
from imgsearch.integrity import CHECKSUM, file_checksum, IndexLoadError, read_meta
from imgsearch.publish import PRUNE_GRACE_SECONDS, build_lock, BuildBusyError, resolve
from imgsearch.quality import ReportError, load_evaluation
from imgsearch.search import Index

from conftest import ROOT, edit_meta, reseal


def flip(path, offsets):
    """Invert one bit at each offset: the file keeps its size, as a bad sector or a bad copy would."""
    data = bytearray(path.read_bytes())
    for o in offsets:
        data[o] ^= 0x10
    path.write_bytes(bytes(data))


# ---- checksums -------------------------------------------------------------------------------

def test_every_file_of_a_build_has_its_checksum_in_meta(index_dir):
    build = resolve(index_dir)
    sums = read_meta(index_dir)["checksums"]
    assert set(sums) == {p.name for p in build.iterdir()} - {layout.META}
    for name, want in sums.items():
        assert want == {"bytes": (build / name).stat().st_size, CHECKSUM: file_checksum(build / name)}


# In a child process: a damaged Annoy file may kill the process that searches it (SIGSEGV), and
# that must fail this test, not end the test run.
FLIPPED_ANN = textwrap.dedent("""
    import shutil, sys
    from pathlib import Path
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from imgsearch.integrity import IndexLoadError
    from imgsearch.search import Index

    src, work = Path(sys.argv[2]), Path(sys.argv[3])
    size = (src / "codes.ann").stat().st_size
    for seed in range(8):
        d = work / f"v{seed}"
        shutil.copytree(src, d)
        data = bytearray((d / "codes.ann").read_bytes())
        # 20 bits in the trees, after the item vectors that the load compares with codes.npy
        for o in np.random.default_rng(seed).integers(size // 2, size, 20):
            data[o] ^= 1 << int(o % 8)
        (d / "codes.ann").write_bytes(bytes(data))
        try:
            index = Index.load(d)
        except IndexLoadError as e:
            print("refused:", e)
            continue
        for q in range(0, len(index), 7):
            index.search(q, k=10, spaces=["code"])
        print("searched")
""")


def test_flipped_bytes_in_the_annoy_file_are_refused_before_any_search(annoy_index_dir, tmp_path):
    r = subprocess.run([sys.executable, "-c", FLIPPED_ANN, str(ROOT), str(resolve(annoy_index_dir)), str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"the child died ({r.returncode}): {r.stderr[-2000:]}"
    lines = r.stdout.splitlines()
    assert len(lines) == 8 and all(line.startswith("refused: codes.ann in the index at") for line in lines), lines
    assert all("missing or corrupt" in line and "rebuild it" in line for line in lines)


@pytest.mark.parametrize("name", [layout.PIXELS, layout.LABELS, layout.CODES, layout.PATHS, layout.PIXEL_BOUND,
                                  layout.PCA, layout.BITS, layout.ANNOY_DIRECTIONS, layout.ANNOY, layout.ANNOY_ROWS,
                                  layout.FAISS_INDEX, layout.FAISS_ROWS, "map_code.npy", "map_pixel.npy"])
def test_a_flipped_byte_in_any_file_is_one_sentence(request, name):
    copy_of = request.getfixturevalue("faiss_copy_of" if name in (layout.FAISS_INDEX, layout.FAISS_ROWS) else "copy_of")
    path = copy_of / name
    flip(path, [path.stat().st_size // 2])  # the middle: array data, which no parser would notice
    with pytest.raises(IndexLoadError, match=f"^{name} in the index at .* is missing or corrupt .*rebuild it") as e:
        Index.load(copy_of)
    assert "\n" not in str(e.value)


def test_a_flipped_byte_in_the_model_is_refused(copy_of):
    flip(copy_of / layout.MODEL, [(copy_of / layout.MODEL).stat().st_size // 2])
    with pytest.raises(IndexLoadError):
        Index.load(copy_of)


def test_an_index_without_checksums_asks_for_a_rebuild(copy_of):
    edit_meta(copy_of, lambda m: m.pop("checksums"))
    with pytest.raises(IndexLoadError, match="records no checksums .*earlier version.*rebuild"):
        read_meta(copy_of)


# ---- meta.json's schema -------------------------------------------------------------------

def _set(path, value):
    def change(meta):
        *parents, last = path
        node = meta
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return change


@pytest.mark.parametrize("path, value, words", [
    (("items",), KeyError, "'items' is missing"),
    (("items",), "60", "'items' must be a whole number"),
    (("items",), 0, "'items' must be a whole number of at least 1"),
    (("items",), True, "'items' must be a whole number"),
    (("code_dim",), 64.0, "'code_dim' must be"),
    (("model",), KeyError, "'model' is missing"),
    (("model", "fingerprint"), KeyError, "'model' must be an object with a fingerprint"),
    (("classes",), "blue", "'classes' must be a list"),
    (("classes",), [1, 2, 3], "'classes' must be a list"),
    (("classes",), ["red", "red", "blue"], "distinct"),
    (("spaces",), [], "'spaces' must be an object"),
    (("spaces",), {}, "'spaces' must be an object"),
    (("preprocessing",), KeyError, "'preprocessing' is missing"),
    (("maps",), "t-SNE", "'maps' must be null or an object"),
    (("spaces", "code", "metric"), "manhattan", "code space's section names the metric 'manhattan'"),
    (("spaces", "pixel", "metric"), KeyError, "pixel space's section has no metric"),
    (("spaces", "code", "settings", "n_trees"), KeyError, "code space's section has no n_trees setting"),
    (("spaces", "code", "settings", "structure"), "hnsw", "names the structure 'hnsw'"),
    (("spaces", "code", "settings", "structure"), "ivf", "unusable: it is built on the hand-made inverted file, which faiss's lists replaced; rebuild it"),
    (("spaces", "bits", "files"), ["bits.npz", "extra.npz"], "lists extra.npz, which has no checksum"),
    (("spaces", "pca", "files"), ["../../etc/passwd"], "must list its files by name"),
    (("spaces", "bits", "bits"), KeyError, "gives neither dims nor bits"),
    (("checksums", "../outside"), {"bytes": 1, CHECKSUM: "00"}, "'checksums' must be"),
    (("checksums", layout.LABELS), KeyError, "no checksum for labels.npy"),
])
def test_damaged_metadata_is_one_sentence(copy_of, path, value, words):
    edit_meta(copy_of, _set(path, value))
    with pytest.raises(IndexLoadError, match=words) as e:
        Index.load(copy_of)
    assert "\n" not in str(e.value) and "rebuild" in str(e.value)


@pytest.mark.parametrize("path, value, words", [
    (("spaces", "code", "settings", "ann_bytes"), KeyError, "code space's section has no ann_bytes setting"),
    (("spaces", "code", "settings", "search_k"), "1e4", "unusable search_k setting"),
    (("spaces", "code", "settings", "search_k"), "10000", "unusable search_k setting"),
])
def test_damaged_annoy_settings_are_one_sentence(annoy_copy_of, path, value, words):
    edit_meta(annoy_copy_of, _set(path, value))
    with pytest.raises(IndexLoadError, match=words) as e:
        Index.load(annoy_copy_of)
    assert "\n" not in str(e.value) and "rebuild" in str(e.value)


@pytest.mark.parametrize("path, value, words", [
    (("spaces", "code", "settings", "lists"), KeyError, "code space's section has no lists setting"),
    (("spaces", "code", "settings", "probes"), "1e4", "unusable probes setting"),
    (("spaces", "code", "settings", "probes"), 0, "unusable probes setting"),
    (("spaces", "code", "settings", "lists"), 7, "code_faiss.index is not the 64-d index of 60 items"),
])
def test_damaged_faiss_settings_are_one_sentence(faiss_copy_of, path, value, words):
    edit_meta(faiss_copy_of, _set(path, value))
    with pytest.raises(IndexLoadError, match=words) as e:
        Index.load(faiss_copy_of)
    assert "\n" not in str(e.value) and "rebuild" in str(e.value)


def test_labels_beyond_the_classes_are_refused(copy_of):
    edit_meta(copy_of, _set(("classes",), []))  # the labels still say 0, 1 and 2
    with pytest.raises(IndexLoadError, match="labels outside the 0 classes"):
        Index.load(copy_of)


def test_a_collection_without_classes_still_loads(copy_of):
    np.save(copy_of / layout.LABELS, np.full(60, -1, np.int64))
    edit_meta(copy_of, _set(("classes",), []))
    reseal(copy_of)
    index = Index.load(copy_of)
    assert index.search(3, k=2).pixel[0].label is None


@pytest.mark.parametrize("code_index, damage, words", [
    ("faiss", lambda d: np.save(d / layout.PIXELS, np.load(d / layout.PIXELS).astype(np.float32)), "pixels.npy .*holds float32"),
    ("faiss", lambda d: np.save(d / layout.LABELS, np.load(d / layout.LABELS) + 5), "labels outside the 3 classes"),
    ("faiss", lambda d: (d / layout.PATHS).write_text(json.dumps([["a"]] * 60)), "paths.json .*neither a path nor null"),
    ("faiss", lambda d: np.save(d / layout.FAISS_ROWS, np.zeros(60, dtype=np.int64)), "code_faiss_rows.npy does not map"),
    ("faiss", lambda d: np.save(d / layout.FAISS_ROWS, np.roll(np.load(d / layout.FAISS_ROWS), 1)),
     "code_faiss.index and codes.npy disagree"),
    ("faiss", lambda d: np.save(d / layout.FAISS_ROWS, np.arange(59)), "code_faiss_rows.npy does not map"),
    ("faiss", lambda d: (d / layout.FAISS_INDEX).write_bytes(b"IxF2" + bytes(100)), "code_faiss.index is not the 64-d index"),
    ("faiss", lambda d: (d / layout.FAISS_INDEX).write_bytes(b"garbage"), "code_faiss.index is missing or corrupt"),
    ("annoy", lambda d: np.save(d / layout.ANNOY_ROWS, np.zeros(60, dtype=np.int64)), "code_ann_rows.npy .*distinct items"),
    ("annoy", lambda d: np.save(d / layout.ANNOY_ROWS, np.roll(np.load(d / layout.ANNOY_ROWS), 1)),
     "codes.ann and codes.npy disagree"),
])
def test_files_with_the_right_checksum_but_unusable_contents_are_refused(request, code_index, damage, words):
    copy_of = request.getfixturevalue("annoy_copy_of" if code_index == "annoy" else "faiss_copy_of")
    damage(copy_of)
    reseal(copy_of)  # written so by a buggy tool, say: only the contents can tell
    with pytest.raises(IndexLoadError, match=words):
        Index.load(copy_of)


def test_a_space_loaders_refusal_is_one_sentence_and_its_bug_is_not_hidden(copy_of, monkeypatch):
    from imgsearch.spaces.bits import BitsSpace
    from imgsearch.spaces import SpaceError

    def refuses(cls, data, section):
        raise SpaceError("its rotation is not square")

    monkeypatch.setattr(BitsSpace, "load", classmethod(refuses))
    with pytest.raises(IndexLoadError, match="^The bits space of the index at .* is unusable: its rotation is not "
                                             "square; rebuild it"):
        Index.load(copy_of)
    # A KeyError in a loader is a bug in the loader, not damage to the index: it must reach its author.
    monkeypatch.setattr(BitsSpace, "load", classmethod(lambda cls, data, section: section["no such key"]))
    with pytest.raises(KeyError):
        Index.load(copy_of)


def test_a_corrupted_map_header_is_one_sentence(copy_of):
    data = (copy_of / "map_code.npy").read_bytes()
    length = int.from_bytes(data[8:10], "little")  # .npy v1: magic, version, header length, header
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (60, 2".ljust(length - 1) + b"\n"
    (copy_of / "map_code.npy").write_bytes(data[:10] + header + data[10 + length:])  # numpy's tokenizer raises TokenError
    reseal(copy_of)  # written by a buggy tool, say: the checksum matches, the header does not parse
    with pytest.raises(IndexLoadError, match="map_code.npy in .* is unreadable"):
        Index.load(copy_of)


# ---- concurrent and killed builds -----------------------------------------------------------

def test_a_second_build_into_the_same_out_waits_for_the_first(tmp_path, collection, checkpoint):
    out = tmp_path / "index"
    events, hold, errors = [], threading.Event(), []

    def first_step(step, frac):
        events.append(("first", step))
        if step == "decoding and encoding":
            hold.wait(60)

    def build(name, on_step):
        try:
            build_index(collection, checkpoint, out, search_k=2, maps=False, progress=False, on_step=on_step)
        except Exception as e:  # noqa: BLE001 - any failure is the bug under test
            errors.append(e)

    a = threading.Thread(target=build, args=("first", first_step))
    a.start()
    deadline = time.time() + 120
    while ("first", "decoding and encoding") not in events:
        assert time.time() < deadline and a.is_alive(), f"the first build never started encoding: {events}"
        time.sleep(0.01)
    b = threading.Thread(target=build, args=("second", lambda step, frac: events.append(("second", step))))
    b.start()
    time.sleep(1.0)
    with pytest.raises(BuildBusyError, match="^Another build into index is running; try again"):
        build_index(collection, checkpoint, out, maps=False, progress=False, wait=False)
    hold.set()
    a.join(120), b.join(120)
    assert errors == []
    second = [step for who, step in events if who == "second"]
    assert second[0] == "waiting for another build to finish"
    assert events.index(("second", "reading the collection")) > events.index(("first", "writing"))
    builds = sorted(p.name for p in (tmp_path / "index.builds").iterdir())
    assert len(builds) == 2 and resolve(out).name in builds and Index.load(out).search(1, k=2).code


KILLED_BUILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    from imgsearch.data import load_folder
    from imgsearch.index import build_index

    def die(step, frac):
        if step == sys.argv[4]:
            os.kill(os.getpid(), signal.SIGKILL)

    build_index(load_folder(sys.argv[2], progress=False), sys.argv[5], sys.argv[3], search_k=2, maps=False,
                progress=False, on_step=die)
""")


def test_a_killed_build_leaves_nothing_that_outlives_the_next_build(tmp_path, collection_dir, collection, checkpoint):
    out = tmp_path / "index"
    build_index(collection, checkpoint, out, search_k=2, maps=False, progress=False)
    live = resolve(out)
    r = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(ROOT), str(collection_dir), str(out), "writing",
                        str(checkpoint)], capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    assert len(list((tmp_path / "index.builds").glob("*.partial"))) == 1 and resolve(out) == live
    stale_link = tmp_path / f".index.link-{os.getpid()}"
    stale_link.symlink_to("index.builds/gone")
    # the kernel released the killed build's lock: this build neither waits nor fails
    build_index(collection, checkpoint, out, search_k=3, maps=False, progress=False, wait=False)
    assert not list((tmp_path / "index.builds").glob("*.partial")) and not stale_link.is_symlink()
    assert not list(tmp_path.glob(".index.link-*"))
    assert Index.load(out).meta["spaces"]["code"]["settings"]["search_k"] == 3


def built(summary):
    return resolve(summary["build_dir"])


def age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_pruning_keeps_the_live_build_and_the_one_before_whatever_their_names(tmp_path, collection, checkpoint):
    out = tmp_path / "index"
    builds = tmp_path / "index.builds"
    first = built(build_index(collection, checkpoint, out, search_k=2, maps=False, progress=False))
    second = built(build_index(collection, checkpoint, out, search_k=2, maps=False, progress=False))
    # A complete build that was never published (killed between writing and the swap), named to sort last
    leftover = builds / "99999999-999999-leftover"
    shutil.copytree(second, leftover)
    hour = 3600
    for p in (first, second, leftover):
        age(p, hour)
    third = built(build_index(collection, checkpoint, out, search_k=2, maps=False, progress=False))
    assert resolve(out) == third
    assert second.is_dir() and Index.load(second).search(1, k=2).code  # the build before the live one
    assert not first.exists() and not leftover.exists()


def test_pruning_spares_builds_that_a_reader_may_still_be_loading(tmp_path, collection, checkpoint):
    out = tmp_path / "index"
    made = [built(build_index(collection, checkpoint, out, search_k=2, maps=False, progress=False))
            for _ in range(3)]
    # the first stopped being live seconds ago: a process that resolved the link just before may still be loading it
    assert all(p.is_dir() for p in made) and PRUNE_GRACE_SECONDS >= 60
    age(made[0], PRUNE_GRACE_SECONDS + 1)
    build_index(collection, checkpoint, out, search_k=2, maps=False, progress=False)
    assert not made[0].exists() and made[1].is_dir() and made[2].is_dir()


def test_a_held_lock_refuses_a_build_that_will_not_wait(tmp_path, collection, checkpoint):
    out = tmp_path / "index"
    with build_lock(out):
        with pytest.raises(BuildBusyError):
            build_index(collection, checkpoint, out, maps=False, progress=False, wait=False)
    assert not out.exists()


# ---- the evaluation report --------------------------------------------------------------------

def test_a_corrupt_evaluation_report_is_not_a_missing_one(tmp_path):
    assert load_evaluation(tmp_path / "none.json") is None
    (tmp_path / "bad.json").write_text('{"pixels": {"P@1": 0.3')
    with pytest.raises(ReportError, match="^The evaluation report at .*bad.json is unreadable"):
        load_evaluation(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text('{"pixels": {}}')
    with pytest.raises(ReportError, match="unreadable \\(it lacks pca\\)"):
        load_evaluation(tmp_path / "partial.json")


def test_an_index_whose_checksums_are_sha256_still_loads_and_is_still_checked(copy_of):
    """Builds before xxh3 recorded sha256: they load without a rebuild, and damage is still refused."""
    import hashlib
    from imgsearch.search import Index

    def to_sha256(meta):
        meta["checksums"] = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                             for p in copy_of.iterdir() if p.name != layout.META}
    edit_meta(copy_of, to_sha256)
    assert len(Index.load(copy_of).search(0, k=3).code) == 3
    labels = np.load(copy_of / layout.LABELS)
    labels[0] = (labels[0] + 1) % 3
    np.save(copy_of / layout.LABELS, labels)
    with pytest.raises(IndexLoadError, match="labels.npy .*missing or corrupt"):
        Index.load(copy_of)


def test_space_tables_are_memory_mapped_and_a_compressed_npz_still_loads(copy_of):
    """np.savez's stored members are mapped, not copied; a table written compressed (by hand, or by a
    plug-in) is read whole instead."""
    from imgsearch.search import Index

    index = Index.load(copy_of)
    assert isinstance(index.spaces["pca"].projected.base, np.memmap)
    columns, hits = np.array(index.spaces["bits"].columns), index.search(3, k=5, spaces=["bits"]).hits["bits"]
    del index  # its maps would see the file rewritten below (builds never rewrite a file in place)
    with np.load(copy_of / layout.BITS) as f:
        arrays = {k: f[k] for k in f.files}
    np.savez_compressed(copy_of / layout.BITS, **arrays)
    reseal(copy_of)
    again = Index.load(copy_of)
    assert not isinstance(again.spaces["bits"].columns.base, np.memmap)
    assert (again.spaces["bits"].columns == columns).all()
    assert again.search(3, k=5, spaces=["bits"]).hits["bits"] == hits
