"""The Streamlit page, driven through AppTest against a small index built by the test."""
import html
import io
import re

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import ROOT, make_image

TIMEOUT = 60  # the first run loads torch, the model and the index


@pytest.fixture
def app(index_dir, monkeypatch):
    monkeypatch.setenv("IMGSEARCH_INDEX", str(index_dir))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def subheaders(at):
    return [s.value for s in at.subheader]


def grid_heads(at):
    """The result grids' headers, one per space (the grids are HTML)."""
    return [html.unescape(h) for el in at.html for h in re.findall(r'class="ims-head"[^>]*>(.*?)</div>', el.value)]


def captions(at):
    """Every picture caption on the page: st.image's, and the HTML figures'."""
    return ([c for img in at.image for c in img.captions]
            + [html.unescape(c) for el in at.html for c in re.findall(r"<figcaption>(.*?)</figcaption>", el.value)])


def png(pixels, size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).resize(size).save(buf, "PNG")
    return buf.getvalue()


def test_first_page_invites_a_query_and_describes_the_index(app):
    assert app.title[0].value.endswith("imgsearch")
    assert any("Upload an image or pick one" in i.value for i in app.info)
    sidebar = " ".join(m.value for m in app.sidebar.markdown)
    assert "**60** images" in sidebar and "angular" in sidebar and "n_trees 4" in sidebar and "search_k 1,000" in sidebar
    assert all(f"**{s}**" in sidebar for s in ("pixel", "pca", "code", "bits")) and "64 bits (8 bytes)" in sidebar


def test_pick_by_number_shows_both_grids_with_counts(app):
    app.number_input(key="item_number").set_value(45).run()
    assert not app.exception
    heads = grid_heads(app)
    assert heads[0].startswith("Pixel space: ") and heads[1].startswith("Code space: ")
    assert heads[0] == "Pixel space: 10/10 share the query's class"  # red images are trivially close in pixels
    caps = captions(app)
    assert "Item 45: red/005.png" in caps and "32×32, as searched" in caps and "Auto-encoder: rebuilt from its 64-d code" in caps and "PCA: rebuilt from 256 components" in caps
    ranks = [c for c in caps if "· d=" in c]
    assert len(ranks) == 20 and ranks[0].startswith("✓ #1 · red")
    assert any("the query itself is left out" in c.value for c in app.caption)
    assert any("Query class: **red**" in m.value for m in app.markdown)


def test_change_k(app):
    app.number_input(key="item_number").set_value(3).run()
    app.slider(key="k").set_value(4).run()
    assert len([c for c in captions(app) if "· d=" in c]) == 8
    assert grid_heads(app)[1].endswith("/4 share the query's class")


def test_random_pick_and_class_pick(app):
    app.button(key="random").click().run()
    assert not app.exception and len(grid_heads(app)) == 2
    app.selectbox(key="pick_class").set_value("green").run()
    app.button(key="random_class").click().run()
    assert any("Query class: **green**" in m.value for m in app.markdown)
    assert grid_heads(app)[0] == "Pixel space: 10/10 share the query's class"
    for _ in range(20):  # "Random" always shows a new query (60 items: the same one would come up about 1 in 3)
        before = app.number_input(key="item_number").value
        app.button(key="random").click().run()
        assert app.number_input(key="item_number").value != before


def test_more_like_this_makes_a_result_the_new_query(app):
    app.number_input(key="item_number").set_value(10).run()
    first_hit_caption = [c for c in captions(app) if "· d=" in c][10]  # code space, rank 1
    more = app.button_group(key="more_code")
    assert more.label == "More like this: code space result"
    assert [o.content for o in more.proto.options][:2] == ["#1", "#2"]
    more.set_value(0).run()
    assert not app.exception
    new_query = app.number_input(key="item_number").value
    assert new_query != 10
    assert any(re.fullmatch(rf"Item {new_query}: \w+/\d+\.png", c) for c in captions(app))
    assert first_hit_caption.split(" · ")[1] in " ".join(m.value for m in app.markdown)  # its class is the query class
    assert app.button_group(key="more_code").value is None  # released: the same rank of the new grid works again
    app.button_group(key="more_pixel").set_value(3).run()
    assert not app.exception and app.number_input(key="item_number").value != new_query


def test_upload_a_valid_image(app):
    app.file_uploader(key="upload").upload("red.png", png(make_image(0, 12345)), "image/png").run()
    assert not app.exception and not app.error
    assert "Upload: red.png" in captions(app)
    assert grid_heads(app) == ["Pixel space", "Code space"]  # an upload has no class to count
    assert len([c for c in captions(app) if "· d=" in c]) == 20


def test_a_bad_upload_gets_one_sentence_and_the_page_keeps_working(app):
    app.file_uploader(key="upload").upload("broken.png", b"\x89PNG\r\n\x1a\n broken", "image/png").run()
    assert not app.exception
    assert len(app.error) == 1 and "could not be decoded" in app.error[0].value or "not an image" in app.error[0].value
    app.number_input(key="item_number").set_value(2).run()
    assert not app.exception and len(grid_heads(app)) == 2


def test_missing_index_offers_to_build_one_when_the_operator_allows_it(tmp_path, monkeypatch, collection_dir):
    monkeypatch.setenv("IMGSEARCH_INDEX", str(tmp_path / "none"))
    monkeypatch.setenv("IMGSEARCH_BUILD_ROOT", str(collection_dir))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "No index at" in at.info[0].value
    assert at.button(key="build") is not None and at.text_input(key="build_data").value == "."
    monkeypatch.delenv("IMGSEARCH_BUILD_ROOT")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert "No index at" in at.info[0].value and len(at.text_input) == 0 and len(at.button) == 0


def test_map_view_shows_both_maps_with_the_query_and_its_neighbours(app):
    app.number_input(key="item_number").set_value(30).run()
    app.radio(key="view").set_value("Map").run()
    assert not app.exception
    assert subheaders(app) == ["Code space", "Pixel space", "What a code direction means"]
    charts = app.get("vega_lite_chart")
    assert len(charts) == 2
    assert any("Query: item 30 (green)" in c.value for c in app.caption)
    strip = captions(app)[:11]  # the query's strip; after it, the grid of what a code direction means
    assert strip[0] == "query" and strip[1:] == [f"#{r}" for r in range(1, 11)]


def test_quality_view_shows_figures_and_disagreements(app, tmp_path, monkeypatch):
    import json

    curve = [0.5] * 100
    report = {k: {"P@1": 0.5, "P@10": 0.4, "P@100": 0.3, "mAP@1000": 0.2} for k in
              ("pixels", "pca", "codes_exact", "codes_served")}
    report.update(reconstruction_mse=0.01, precision_curves={k: curve for k in report},
                  settings={"query_items": 9, "queries": "q", "database_items": 60, "database": "d", "model": "m"})
    report["per_class_P@10"] = {k: {"red": 0.9, "green": 0.5, "blue": 0.1} for k in ("pixels", "codes_served")}
    (tmp_path / "eval.json").write_text(json.dumps(report))
    monkeypatch.setenv("IMGSEARCH_EVALUATION", str(tmp_path / "eval.json"))
    app.radio(key="view").set_value("Quality").run()
    assert not app.exception
    assert any("**9** queries" in m.value for m in app.markdown)
    assert len(app.dataframe) == 1
    assert any("class by class" in m.value for m in app.markdown)
    assert len(app.get("vega_lite_chart")) == 2  # the precision curves, and P@10 per class
    app.selectbox(key="quality_class").set_value("red").run()
    text = " ".join(m.value for m in app.markdown)
    assert "Of 20 sampled **red** images" in text and "Code space right, pixel space wrong" in text


def test_quality_view_without_a_report_says_how_to_make_one(app, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGSEARCH_EVALUATION", str(tmp_path / "none.json"))
    app.radio(key="view").set_value("Quality").run()
    assert any("scripts/evaluate.py" in i.value for i in app.info)


def test_the_map_view_draws_a_bounded_sample(app, monkeypatch):
    monkeypatch.setattr("imgsearch.explore.MAP_POINTS", 20)
    app.number_input(key="item_number").set_value(7).run()
    app.radio(key="view").set_value("Map").run()
    assert not app.exception
    assert any("a fixed sample of 20 of the 60 images" in m.value for m in app.markdown)
    assert any("Query: item 7" in c.value for c in app.caption)


# ---- what the views draw: imgsearch.explore ---------------------------------------------------

def test_the_map_background_is_a_bounded_seeded_sample_and_the_query_is_always_drawn(index_dir):
    from imgsearch.explore import map_highlights, map_points, map_sample
    from imgsearch.search import Index

    index = Index.load(index_dir)
    background = map_points(index, "code", limit=25)
    assert len(background) == 25 and background["id"].is_monotonic_increasing
    assert background.equals(map_points(index, "code", limit=25))  # seeded: the same dots for every query
    assert len(map_points(index, "code", limit=1000)) == 60  # a small collection is drawn whole
    million = map_sample(1_000_000, 5000)
    assert len(np.unique(million)) == 5000 and million.max() < 1_000_000
    np.testing.assert_array_equal(background[["x", "y"]].to_numpy(), index.maps["code"][background["id"]])

    outside = sorted(set(range(60)) - set(background["id"]))  # the query and neighbours the sample left out
    query, neighbours = outside[0], outside[1:4]
    top = map_highlights(index, "code", query, neighbours, background=background["id"].to_numpy(), hover=5)
    assert top["role"].tolist() == ["sample"] * 5 + ["neighbour"] * 3 + ["query"]  # the query drawn last, on top
    assert top["id"].iloc[-1] == query and set(top["id"].iloc[5:8]) == set(neighbours)
    assert set(top["id"].iloc[:5]) <= set(background["id"])
    assert all(url.startswith("data:image/png;base64,") for url in top["image"])
    np.testing.assert_array_equal(top[["x", "y"]].to_numpy(), index.maps["code"][top["id"]])
    assert top["label"].iloc[-1] == index.label(query)


def test_on_a_phone_each_row_of_the_grid_holds_one_rank_of_every_space():
    from imgsearch.explore import rank_by_rank

    cells = rank_by_rank(3, 4)
    assert [(c.space, c.rank) for c in cells] == [(s, r) for s in range(3) for r in range(4)]  # wide: space by space
    rows = {}
    for c in cells:
        assert (c.narrow_row, c.narrow_col) == (c.rank + 2, c.space + 1)  # row 1 holds the headers
        rows.setdefault(c.narrow_row, []).append(c.space)
    assert rows == {r + 2: [0, 1, 2] for r in range(4)}


def test_the_result_grid_is_one_block_with_captions_frames_and_both_layouts():
    from imgsearch.explore import results_html
    from imgsearch.search import Hit

    pixels = lambda i: np.full((32, 32, 3), i, np.uint8)  # noqa: E731
    columns = [("Pixel space: 1/2 share the query's class", [Hit(3, 0.5, "cat", None), Hit(4, 0.75, "<dog>", None)],
                lambda d: f"{d:.2f}"),
               ("Code space", [Hit(5, 0.1, None, None), Hit(6, 0.2, "cat", None)], lambda d: f"{d:.1f}")]
    body = results_html(columns, pixels, "cat", per_row=5)
    figures = re.findall(r'<figure class="([^"]*)" style="--row:(\d+);--col:(\d+)"[^>]*>.*?<figcaption>(.*?)</figcaption>', body)
    assert [(cls, row, col, html.unescape(cap)) for cls, row, col, cap in figures] == [
        ("ims-hit ims-match", "2", "1", "✓ #1 · cat · d=0.50"), ("ims-hit", "3", "1", "#2 · <dog> · d=0.75"),
        ("ims-hit", "2", "2", "#1 · unlabelled · d=0.1"), ("ims-hit ims-match", "3", "2", "✓ #2 · cat · d=0.2")]
    assert "&lt;dog&gt;" in body and "<dog>" not in body  # labels are text, never markup
    assert body.count("data:image/png;base64,") == 4 and "--spaces:2" in body and "--per-row:5" in body
    assert "@container ims (max-width" in body and body.index("<style>") > body.index("</figure>")


# ---- what keeps the page fast (docs/page.md) ----------------------------------------------------

def test_warming_up_encodes_the_map_hover_pictures_before_a_visitor_asks(index_dir):
    from imgsearch.explore import HOVER_SAMPLE, _png_url
    from imgsearch.page.warm import warm_views
    from imgsearch.publish import resolve

    _png_url.cache_clear()
    warm_views(str(resolve(index_dir)))
    # Both maps' sampled dots (the same 50 of the 60 items, one seed) have their 64-px pictures encoded.
    assert _png_url.cache_info().currsize == HOVER_SAMPLE


def test_a_warm_up_that_fails_logs_one_line_and_raises_nothing(tmp_path, capsys):
    from imgsearch.page.warm import warm_views

    warm_views(str(tmp_path / "no-such-build"))
    assert "warming up the page's caches failed" in capsys.readouterr().err


def test_server_settings_that_keep_a_query_fast():
    tomllib = pytest.importorskip("tomllib")

    conf = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert conf["server"]["fileWatcherType"] == "none"  # a watcher over .venv cost the server a core
    assert conf["runner"]["postScriptGC"] is False  # a full collection after each run held every reply back
