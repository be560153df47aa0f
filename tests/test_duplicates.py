"""Near-duplicates: planted copies in a small folder come back as groups, with the keeper rule's choice."""
import csv
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import make_image
from imgsearch.cli import main
from imgsearch.data import load_folder
from imgsearch.duplicates import CSV_FIELDS, DuplicatesError, Item, components, keeper
from imgsearch.index import build_index
from imgsearch.search import Index

OLD, NEW = 1_600_000_000, 1_700_000_000  # modification times of the planted files


@pytest.fixture(scope="module")
def planted(tmp_path_factory, checkpoint):
    """Ten distinct images; a.png saved twice (the copy a larger file); b.png three times, byte for byte
    (b_twin.png the oldest, one in a subfolder); c.png and its mirror image (a larger file). Returns the
    folder and its index."""
    root = tmp_path_factory.mktemp("planted")
    for i in range(10):
        Image.fromarray(make_image(i % 3, seed=500 + i)).save(root / f"distinct{i}.png")
    a, b = make_image(0, seed=100), make_image(1, seed=101)
    Image.fromarray(a).save(root / "a.png", compress_level=9)
    Image.fromarray(a).save(root / "a_copy.png", compress_level=0)
    c = make_image(2, seed=102)
    Image.fromarray(c).save(root / "c.png", compress_level=9)
    Image.fromarray(c[:, ::-1]).save(root / "c_mirror.png", compress_level=0)
    (root / "sub").mkdir()
    for name, mtime in (("b.png", NEW), ("b_twin.png", OLD), ("sub/b_third.png", NEW)):
        Image.fromarray(b).save(root / name)
        os.utime(root / name, (mtime, mtime))
    out = root.parent / (root.name + "-index")
    build_index(load_folder(root, progress=False), checkpoint, out, n_trees=2, search_k=100, progress=False)
    return root, out


def snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def names(group):
    return [item.name for item in group.items]


@pytest.mark.parametrize("space, threshold", [("pixel", 0), ("bits", 0), ("code", 1e-4)])
def test_planted_copies_are_the_groups(planted, space, threshold):
    root, out = planted
    planted_groups = [["b_twin.png", "b.png", "sub/b_third.png"], ["a_copy.png", "a.png"], ["c_mirror.png", "c.png"]]
    if space == "pixel":  # exact: only the planted copies have equal pixels (the mirror image: flipped)
        found = Index.load(out).duplicates(space, threshold)
        assert [names(g) for g in found.groups] == planted_groups and found.pairs == 5  # b: 3 pairs, a: 1, c: 1
        assert [names(g) for g in Index.load(out).duplicates(space, threshold, mirror=False).groups] == planted_groups[:2]
    else:  # the tiny untrained model may give distinct images equal bits too: each set of copies is in one group
        found = Index.load(out).duplicates(space, threshold, mirror=False)
        assert all(any(set(g) <= set(names(f)) for f in found.groups) for g in planted_groups[:2])
    assert found.items == 17
    group = next(g for g in found.groups if "a_copy.png" in names(g))
    keep = group.items[0]  # the larger file of two with the same pixels (or the one with most pixels, if another joined)
    assert (keep.name, keep.bytes, keep.width, keep.height) == ("a_copy.png", (root / "a_copy.png").stat().st_size, 32, 32)
    assert keep.path == str(root.resolve() / "a_copy.png") and group.keep == keep.id and keep.distance_to_keep == 0
    assert next(it for it in group.items if it.name == "a.png").distance_to_keep == pytest.approx(0, abs=1e-3)


def test_cli_writes_json_and_csv_and_touches_no_file(planted, tmp_path, capsys):
    root, out = planted
    before = snapshot(root)
    assert main(["duplicates", "--index", str(out), "--space", "pixel", "--threshold", "0",
                 "--json", str(tmp_path / "d.json"), "--csv", str(tmp_path / "d.csv")]) == 0
    assert snapshot(root) == before
    assert "3 groups of near-duplicates" in capsys.readouterr().out
    report = json.loads((tmp_path / "d.json").read_text())
    assert list(report) == ["space", "threshold", "items", "pairs", "seconds", "groups"]
    assert (report["space"], report["threshold"], report["items"], report["pairs"]) == ("pixel", 0.0, 17, 5)
    first = report["groups"][0]
    assert list(first) == ["keep", "items"]
    assert list(first["items"][0]) == ["id", "path", "name", "bytes", "width", "height", "distance_to_keep"]
    assert first["keep"] == first["items"][0]["id"] and first["items"][0]["name"] == "b_twin.png"
    rows = list(csv.DictReader((tmp_path / "d.csv").open()))
    assert tuple(rows[0]) == CSV_FIELDS
    assert [(r["group"], r["keep"], r["name"]) for r in rows] == [
        ("1", "True", "b_twin.png"), ("1", "False", "b.png"), ("1", "False", "sub/b_third.png"),
        ("2", "True", "a_copy.png"), ("2", "False", "a.png"), ("3", "True", "c_mirror.png"), ("3", "False", "c.png")]


def test_cli_bad_threshold_is_one_sentence(planted, capsys):
    _, out = planted
    assert main(["duplicates", "--index", str(out), "--space", "bits", "--threshold", "2.5"]) == 2
    assert capsys.readouterr().err.strip() == "error: The bits space's threshold is a whole number of bits, not '2.5'."
    with pytest.raises(DuplicatesError):
        Index.load(out).duplicates("pixel", -1)


def test_keeper_rule():
    def item(i, w, h, size, mtime):
        return Item(i, f"/x/{i}", str(i), size, w, h, 0.0, mtime)
    assert keeper([item(0, 32, 32, 900, 1), item(1, 64, 64, 100, 5)]).id == 1  # most pixels
    assert keeper([item(0, 32, 32, 100, 1), item(1, 32, 32, 900, 5)]).id == 1  # then the largest file
    assert keeper([item(0, 32, 32, 100, 5), item(1, 32, 32, 100, 1)]).id == 1  # then the oldest
    assert keeper([item(3, None, None, None, None), item(2, None, None, None, None)]).id == 2  # then the first


def test_components_largest_first():
    groups = components(7, np.array([5, 0, 2]), np.array([6, 1, 1]))
    assert [g.tolist() for g in groups] == [[0, 1, 2], [5, 6]]


def test_page_draws_the_groups_with_names_and_a_csv(planted, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT

    root, out = planted
    monkeypatch.setenv("IMGSEARCH_INDEX", str(out))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.radio(key="view").set_value("Duplicates").run()
    at.radio(key="dup_space").set_value("pixel").run()
    at.slider(key="dup_threshold_pixel").set_value(0.0).run()
    assert not at.exception, at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "**3 groups**, **5 pairs** within 0.0 among 17 images" in text
    assert "**Group 1**: 3 items" in text and "**Group 2**: 2 items" in text
    captions = [c for img in at.image for c in img.captions]
    size = (root / "a_copy.png").stat().st_size
    assert captions[0].startswith("★ keep · b_twin.png · 32×32 · ")
    assert captions[3] == f"★ keep · a_copy.png · 32×32 · {size / 1024:.1f} KB"
    assert captions[1].startswith("b.png") and captions[2].startswith("sub/b_third.png")
    assert str(root) not in " ".join(captions) + text  # no server folder on the page
    assert at.get("download_button")[0].proto.label == "Download as CSV"


def test_pair_scores_of_a_hand_made_grouping():
    from imgsearch.duplicates_bench import VARIANTS, scores

    # two originals (groups 0, 1) with a flip each, and two distractors
    group = np.array([0, 0, 1, 1, -1, -1])
    kind = np.array(["original", "flip", "original", "flip", "distractor", "distractor"])
    # found: {0, 1, 4} (one true pair, two false), {2}, {3}, {5}
    got = scores(np.array([7, 7, 8, 9, 7, 10]), group, kind)
    assert got["overall"] == {"precision": round(1 / 3, 4), "recall": 0.5, "f1": 0.4}
    assert got["by_variant"]["flip"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5}  # pairs with item 1: (0,1) yes, (1,4) no
    assert set(got["by_variant"]) == set(VARIANTS) and got["by_variant"]["crop"]["recall"] == 1.0  # no crops: nothing missed


def test_every_variant_kind_changes_the_picture_and_keeps_its_content():
    from imgsearch.duplicates_bench import SIDE, VARIANTS, generated_photo, variant

    rng = np.random.default_rng(0)
    original = generated_photo(rng)
    assert original.size == (SIDE, SIDE)
    for kind in VARIANTS:
        img, quality = variant(original, kind, rng)
        assert 30 <= quality <= 95
        assert 0.5 * SIDE <= min(img.size) and max(img.size) <= 2 * SIDE + 12, kind


def test_page_computes_once_per_threshold_and_shows_progress_for_slow_work(planted, monkeypatch):
    import time

    from streamlit.testing.v1 import AppTest

    from conftest import ROOT

    _, out = planted
    real, calls = Index.duplicates, []

    def slow(self, space, threshold, progress=None):
        calls.append((space, threshold))
        time.sleep(1.05)  # past the second after which the page draws a progress bar
        progress(0.5)
        return real(self, space, threshold, progress)
    monkeypatch.setattr(Index, "duplicates", slow)
    monkeypatch.setenv("IMGSEARCH_INDEX", str(out))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()  # a threshold no other test asks for: the store is shared by the sessions of the process
    at.radio(key="view").set_value("Duplicates").run()
    at.radio(key="dup_space").set_value("pixel").run()
    at.slider(key="dup_threshold_pixel").set_value(0.1).run()
    at.slider(key="dup_threshold_pixel").set_value(0.1).run()
    assert not at.exception, at.exception
    assert calls.count(("pixel", 0.1)) == 1
    assert any("**3 groups**" in m.value for m in at.markdown)
