"""A person's own folder: results named by their path in it, narrowed by distance, folder and class."""
import json
import os

import numpy as np
import pytest

from imgsearch import cli
from imgsearch.search import Index, Hit, relative_name


@pytest.fixture(scope="module")
def index(index_dir):
    return Index.load(index_dir)


def test_hits_are_named_by_their_path_in_the_collection(index, collection):
    hit = index.search(3, k=1, spaces=["pixel"]).pixel[0]
    assert hit.path == collection.paths[hit.id]
    assert hit.name == os.path.relpath(hit.path, collection.spec) and hit.name.startswith("blue/")
    assert relative_name(None, "/a") is None and relative_name("/b/c.jpg", "/a") == "c.jpg"  # outside: its name only
    assert Hit(1, 0.5, None, None).to_dict() == {"id": 1, "distance": 0.5, "label": None, "path": None, "name": None}


def exact_neighbours(index, space, query, rows):
    """Every allowed row's distance to the query, by brute force: the reference for a filtered search."""
    from imgsearch.spaces import Query

    vector = index.spaces[space].embed(Query(index.pixels[query], index.encode))
    if space == "pixel":
        d = np.sqrt(((index.pixels[rows].reshape(len(rows), -1).astype(np.int64) - vector.reshape(-1)) ** 2).sum(1)) / 255
    else:
        d = np.linalg.norm(index.spaces["pca"].projected[rows] - vector, axis=1)
    return dict(zip(rows.tolist(), d.tolist()))


@pytest.mark.numeric
@pytest.mark.parametrize("space", ["pixel", "pca"])
def test_an_exact_space_searches_only_the_allowed_items(index, space):
    rows = index.allowed_rows(folder="red")
    assert len(rows) == 20 and all(index.label(i) == "red" for i in rows)
    res = index.search(3, k=5, spaces=[space], folder="red")  # a blue query among red images only
    want = exact_neighbours(index, space, 3, rows)
    got = res.hits[space]
    assert len(got) == 5 and space not in res.notes
    kth = sorted(want.values())[4]
    for h in got:  # the five nearest red images, up to ties at the fifth distance
        assert h.id in want and h.distance == pytest.approx(want[h.id], rel=1e-4, abs=1e-5)
        assert want[h.id] <= kth * (1 + 1e-5)


def test_the_bits_space_searches_only_the_allowed_items(index):
    rows = index.allowed_rows(label=["green", "red"])
    res = index.search(3, k=50, spaces=["bits"], label=["green", "red"])
    ids = [h.id for h in res.hits["bits"]]
    assert len(ids) == 40 and set(ids) == set(rows.tolist())  # every allowed item, no other
    space = index.spaces["bits"]
    everyone_ids, everyone_d = space.search(space.embed(_query(index, 3)), len(index))
    by_id = dict(zip(everyone_ids.tolist(), everyone_d.tolist()))
    assert [h.distance for h in res.hits["bits"]] == sorted(by_id[i] for i in ids)
    assert all(h.distance == by_id[h.id] for h in res.hits["bits"])


def _query(index, i):
    from imgsearch.spaces import Query

    return Query(index.pixels[i], index.encode)


def test_an_approximate_space_asks_for_more_and_says_when_fewer_pass(index):
    res = index.search(3, k=5, spaces=["code"], folder="green")
    assert len(res.code) == 5 and all(h.name.startswith("green/") for h in res.code)
    res = index.search(3, k=30, spaces=["code"], folder="green")  # only 20 green images exist
    assert res.passed("code") == 20 and "20 of 30 results passed" in res.notes["code"]
    assert "asked for its" in res.notes["code"]


def test_a_distance_cutoff_keeps_only_closer_results(index):
    full = index.search(3, k=10, spaces=["pixel", "code"])
    d = full.pixel[4].distance
    cut = index.search(3, k=10, spaces=["pixel", "code"], max_distance={"pixel": d})
    assert [h.id for h in cut.pixel] == [h.id for h in full.pixel if h.distance < d]
    assert len(cut.code) == 10 and "code" not in cut.notes  # the cutoff applies to the space it names
    assert "closer than" in cut.notes["pixel"]
    assert index.search(3, k=10, spaces=["code"], max_distance=0).code == []


@pytest.mark.parametrize("kw, words", [
    ({"folder": "/etc"}, "relative to the collection's root"),
    ({"folder": "red/../../x"}, "relative to the collection's root"),
    ({"folder": "purple"}, "no images in the folder 'purple'"),
    ({"label": "cat"}, "no class 'cat'; its classes are: blue, green, red"),
    ({"max_distance": -1}, "zero or more"),
    ({"max_distance": {"bits": 3}}, "does not use"),
])
def test_a_bad_filter_is_one_sentence(index, kw, words):
    with pytest.raises(ValueError, match=words):
        index.search(3, k=3, spaces=["pixel", "code"], **kw)


def test_the_command_line_narrows_and_names(index_dir, collection, capsys):
    query = collection.paths[3]
    rc = cli.main(["search", query, "--index", str(index_dir), "-k", "30", "--json", "--spaces", "pixel,code",
                   "--folder", "green", "--folder", "red/", "--label", "red"])
    out, err = capsys.readouterr()
    assert rc == 0
    res = json.loads(out)
    for hits in res.values():
        assert len(hits) == 20 and all(h["name"].startswith("red/") and h["label"] == "red" for h in hits)
        assert all(h["path"].endswith(h["name"]) for h in hits)
    assert "20 of 30 results passed" in err
    rc = cli.main(["search", query, "--index", str(index_dir), "--max-distance", "0", "--spaces", "code"])
    out, err = capsys.readouterr()
    assert rc == 0 and "0 of 10 results passed (closer than 0.000)" in out
    assert cli.main(["search", query, "--index", str(index_dir), "--folder", "/etc"]) == 2
    assert "relative to the collection's root" in capsys.readouterr().err


# ---- a folder of camera photos: real pictures, names, the page ------------------------------------

@pytest.fixture(scope="module")
def photo_index(tmp_path_factory, checkpoint):
    """Ten small generated camera JPEGs in nested subfolders (every third stored sideways, EXIF 6), indexed."""
    from imgsearch.index import build_index
    from imgsearch.photos import write_camera_folder

    root = tmp_path_factory.mktemp("photos") / "camera"
    write_camera_folder(root, 10, size=(640, 480))
    out = root.parent / "index"
    build_index(str(root), checkpoint, out, progress=False, maps=False)
    return out


def test_a_preview_is_the_file_upright_and_at_least_160_pixels(photo_index):
    index = Index.load(photo_index)
    names = [index.name(i) for i in range(len(index))]
    assert "2024/mountains/day-1/IMG_0003.jpg" in names
    upright = index.preview(names.index("2023/beach/IMG_0000.jpg"))
    turned = index.preview(names.index("2024/mountains/day-2/IMG_0004.jpg"))  # i % 3 == 2 -> stored sideways
    assert upright.size == (256, 192) and turned.size == (256, 192)  # EXIF orientation applied: landscape again
    assert index.folders() == ["2023", "2023/beach", "2023/city", "2024", "2024/garden", "2024/mountains",
                               "2024/mountains/day-1", "2024/mountains/day-2"]
    d = index.details(names.index("2024/mountains/day-2/IMG_0004.jpg"))
    assert (d["width"], d["height"], d["label"]) == (640, 480, "2024") and d["bytes"] > 1000 and d["modified"]


def test_a_preview_never_reads_outside_the_collection_or_a_changed_file(photo_index, tmp_path, index_dir):
    from imgsearch.previews import item_preview_jpeg

    index = Index.load(photo_index)
    path = index.paths[0]
    assert item_preview_jpeg(path, index.root, index.file_stats(0))[:2] == b"\xff\xd8"
    assert item_preview_jpeg(path, str(tmp_path), None) is None  # not inside that folder
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(open(path, "rb").read())
    link = os.path.join(index.root, "elsewhere.jpg")
    os.symlink(outside, link)  # inside the collection by name, outside once resolved
    try:
        assert item_preview_jpeg(link, index.root, None) is None
        assert index.details(0)["bytes"] and Index.load(photo_index).root in path
    finally:
        os.unlink(link)
    size, mtime = index.file_stats(0)
    assert item_preview_jpeg(path, index.root, (size + 1, mtime)) is None  # rewritten since the build: its pixels
    assert Index.load(index_dir).preview(0).size == (160, 160)  # a 32x32 item: enlarged crisply


def test_the_page_shows_photos_with_their_names_narrows_and_opens_them(photo_index, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT

    monkeypatch.setenv("IMGSEARCH_INDEX", str(photo_index))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.number_input(key="item_number").set_value(5).run()  # 2023/beach/IMG_0005.jpg
    assert not at.exception, at.exception
    grid = next(el.value for el in at.html if "class=\"ims-results\"" in el.value)
    assert grid.count('class="ims-photo" src="data:image/jpeg;base64,') == 2 * 9
    assert 'class="ims-name">2024/mountains/day-1/IMG_0003.jpg<' in grid
    at.multiselect(key="filter_folders").set_value(["2024/mountains"]).run()
    grid = next(el.value for el in at.html if "class=\"ims-results\"" in el.value)
    assert grid.count("ims-name\">2024/mountains/") == 2 * 4 and "ims-name\">2023/" not in grid
    assert grid.count(" · 4 of 10 passed<") == 2 and any("4 of 10 results passed" in c.value for c in at.caption)
    at.button_group(key="open_code").set_value(0).run()
    facts = " ".join(m.value for m in at.markdown)
    assert "`2024/mountains/" in facts and "640×480 pixels" in facts and "bytes" in facts
    assert index_root_hidden(at, photo_index)
    at.button(key="opened_more").click().run()
    assert not at.exception and at.session_state.query in {3, 4, 8, 9}


def index_root_hidden(at, photo_index) -> bool:
    """No absolute server path of the collection anywhere on the page."""
    root = str(Index.load(photo_index).root)
    texts = [el.value for el in at.html] + [m.value for m in at.markdown] + [c.value for c in at.caption]
    return not any(root in t for t in texts)


def test_a_cutoff_slider_spans_the_collection_s_own_distances(index):
    from imgsearch.explore import distance_range

    low, high, middle = distance_range(index, "bits", queries=5, k=10)
    found = [h.distance for i in np.random.default_rng(0).choice(len(index), 5, replace=False)
             for h in index.search(int(i), k=10, spaces=["bits"]).hits["bits"]]
    assert (low, high, middle) == (0.0, max(found), float(np.median(found)))
