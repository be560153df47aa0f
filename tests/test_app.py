"""The Streamlit page, driven through AppTest against a small index built by the test."""
import io

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


def captions(at):
    return [c for img in at.image for c in img.captions]


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
    heads = subheaders(app)
    assert heads[0].startswith("Pixel space: ") and heads[1].startswith("Code space: ")
    assert heads[0] == "Pixel space: 10/10 share the query's class"  # red images are trivially close in pixels
    caps = captions(app)
    assert "Item 45" in caps and "32×32, as searched" in caps and "Auto-encoder: rebuilt from its 64-d code" in caps and "PCA: rebuilt from 256 components" in caps
    ranks = [c for c in caps if "· d=" in c]
    assert len(ranks) == 20 and ranks[0].startswith("✓ #1 · red")
    assert any("the query itself is left out" in c.value for c in app.caption)
    assert any("Query class: **red**" in m.value for m in app.markdown)


def test_change_k(app):
    app.number_input(key="item_number").set_value(3).run()
    app.slider(key="k").set_value(4).run()
    assert len([c for c in captions(app) if "· d=" in c]) == 8
    assert subheaders(app)[1].endswith("/4 share the query's class")


def test_random_pick_and_class_pick(app):
    app.button(key="random").click().run()
    assert not app.exception and len(subheaders(app)) == 2
    app.selectbox(key="pick_class").set_value("green").run()
    app.button(key="random_class").click().run()
    assert any("Query class: **green**" in m.value for m in app.markdown)
    assert subheaders(app)[0] == "Pixel space: 10/10 share the query's class"


def test_more_like_this_makes_a_result_the_new_query(app):
    app.number_input(key="item_number").set_value(10).run()
    first_hit_caption = [c for c in captions(app) if "· d=" in c][10]  # code space, rank 1
    app.button(key="more_code_0").click().run()
    assert not app.exception
    new_query = app.number_input(key="item_number").value
    assert new_query != 10
    assert f"Item {new_query}" in captions(app)
    assert first_hit_caption.split(" · ")[1] in " ".join(m.value for m in app.markdown)  # its class is the query class


def test_upload_a_valid_image(app):
    app.file_uploader(key="upload").upload("red.png", png(make_image(0, 12345)), "image/png").run()
    assert not app.exception and not app.error
    assert "Upload: red.png" in captions(app)
    assert subheaders(app) == ["Pixel space", "Code space"]  # an upload has no class to count
    assert len([c for c in captions(app) if "· d=" in c]) == 20


def test_a_bad_upload_gets_one_sentence_and_the_page_keeps_working(app):
    app.file_uploader(key="upload").upload("broken.png", b"\x89PNG\r\n\x1a\n broken", "image/png").run()
    assert not app.exception
    assert len(app.error) == 1 and "could not be decoded" in app.error[0].value or "not an image" in app.error[0].value
    app.number_input(key="item_number").set_value(2).run()
    assert not app.exception and len(subheaders(app)) == 2


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
    assert subheaders(app) == ["Code space", "Pixel space"]
    charts = app.get("vega_lite_chart")
    assert len(charts) == 2
    assert any("Query: item 30 (green)" in c.value for c in app.caption)
    strip = app.image[-1].captions
    assert strip[0] == "query" and strip[1:] == [f"#{r}" for r in range(1, 11)]


def test_quality_view_shows_figures_and_disagreements(app, tmp_path, monkeypatch):
    import json

    curve = [0.5] * 100
    report = {k: {"P@1": 0.5, "P@10": 0.4, "P@100": 0.3, "mAP@1000": 0.2} for k in
              ("pixels", "pca", "codes_exact", "codes_served")}
    report.update(reconstruction_mse=0.01, precision_curves={k: curve for k in report},
                  settings={"query_items": 9, "queries": "q", "database_items": 60, "database": "d", "model": "m"})
    (tmp_path / "eval.json").write_text(json.dumps(report))
    monkeypatch.setenv("IMGSEARCH_EVALUATION", str(tmp_path / "eval.json"))
    app.radio(key="view").set_value("Quality").run()
    assert not app.exception
    assert any("**9** queries" in m.value for m in app.markdown)
    assert len(app.dataframe) == 1
    app.selectbox(key="quality_class").set_value("red").run()
    text = " ".join(m.value for m in app.markdown)
    assert "Of 20 sampled **red** images" in text and "Code space right, pixel space wrong" in text


def test_quality_view_without_a_report_says_how_to_make_one(app, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGSEARCH_EVALUATION", str(tmp_path / "none.json"))
    app.radio(key="view").set_value("Quality").run()
    assert any("scripts/evaluate.py" in i.value for i in app.info)
