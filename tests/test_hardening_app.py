"""The page: visitors cannot build from the server's folders unless the operator allows it,
never see absolute server paths, and a session that outlives an index swap keeps working."""
import json
import re
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from imgsearch import layout
from imgsearch.index import build_index
from imgsearch.publish import build_lock, resolve

from conftest import ROOT, write_collection

TIMEOUT = 90  # the first run loads torch, the model and the index; a build from the page adds a few seconds


def page(monkeypatch, index, root=None) -> AppTest:
    monkeypatch.setenv("IMGSEARCH_INDEX", str(index))
    if root is None:
        monkeypatch.delenv("IMGSEARCH_BUILD_ROOT", raising=False)
    else:
        monkeypatch.setenv("IMGSEARCH_BUILD_ROOT", str(root))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def shown_text(at) -> str:
    """Everything a visitor reads on the page."""
    parts = [e.value for kind in ("info", "warning", "error", "caption", "markdown", "success") for e in getattr(at, kind)]
    parts += [e.value for e in at.sidebar.markdown] + [e.value for e in at.sidebar.caption]
    return "\n".join(str(p) for p in parts)


# ---- building from the page ----------------------------------------------------------------

def test_without_a_build_root_the_page_offers_no_folder_field(tmp_path, monkeypatch):
    at = page(monkeypatch, tmp_path / "none")
    assert len(at.text_input) == 0 and len(at.button) == 0
    assert "No index at" in at.info[0].value and any("IMGSEARCH_BUILD_ROOT" in c.value for c in at.caption)


def test_a_damaged_index_shows_a_sentence_without_server_paths(index_dir, tmp_path, monkeypatch):
    copy = tmp_path / "secret-place" / "index"
    shutil.copytree(resolve(index_dir), copy)
    meta = json.loads((copy / layout.META).read_text())
    meta["spaces"]["code"]["settings"]["search_k"] = "lots"
    (copy / layout.META).write_text(json.dumps(meta))
    at = page(monkeypatch, copy)
    text = shown_text(at)
    assert "unusable search_k setting" in text and "rebuild" in text
    assert str(tmp_path) not in text and "secret-place" not in text and "/meta.json" not in text
    assert len(at.text_input) == 0


@pytest.fixture
def build_root(tmp_path):
    root = tmp_path / "root"
    write_collection(root / "pictures", per_class=4)
    outside = write_collection(tmp_path / "outside", per_class=2)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return root


@pytest.mark.parametrize("typed, words", [
    ("../outside", "Only folders inside the build root"),
    ("/etc", "Only folders inside the build root"),
    ("escape", "Only folders inside the build root"),  # a symlink inside the root that leads out of it
    ("pictures/../../outside", "Only folders inside the build root"),
    ("nothing-here", "There is no folder 'nothing-here' inside the build root"),
])
def test_the_build_form_refuses_folders_outside_the_root(tmp_path, monkeypatch, build_root, typed, words):
    at = page(monkeypatch, tmp_path / "none", build_root)
    at.text_input(key="build_data").set_value(typed)
    at.button(key="build").click().run()
    assert not at.exception
    assert len(at.error) == 1 and words in at.error[0].value
    assert not (tmp_path / "none").exists() and str(tmp_path) not in shown_text(at)


def test_the_build_form_builds_a_folder_inside_the_root(tmp_path, monkeypatch, build_root):
    at = page(monkeypatch, tmp_path / "index", build_root)
    assert at.text_input(key="build_data").value == "."
    at.text_input(key="build_data").set_value("pictures")
    at.button(key="build").click().run()
    assert not at.exception, at.exception
    assert not at.error and (tmp_path / "index").is_symlink()
    at.run()
    sidebar = " ".join(m.value for m in at.sidebar.markdown)
    assert "**12** images from `pictures`" in sidebar and str(tmp_path) not in shown_text(at)


def test_one_build_at_a_time(tmp_path, monkeypatch, build_root):
    at = page(monkeypatch, tmp_path / "index", build_root)
    at.text_input(key="build_data").set_value("pictures")
    with build_lock(tmp_path / "index"):  # a terminal build, or another visitor's, is running
        at.button(key="build").click().run()
    assert not at.exception
    assert "Another build into index is running" in at.warning[0].value and not (tmp_path / "index").exists()


def test_the_sidebar_shows_no_absolute_path(index_dir, monkeypatch):
    at = page(monkeypatch, index_dir)
    caption = " ".join(c.value for c in at.sidebar.caption)
    assert "Index directory: `index`" in caption and str(index_dir.parent) not in shown_text(at)


def test_a_corrupt_evaluation_report_says_so(index_dir, tmp_path, monkeypatch):
    (tmp_path / "eval.json").write_text('{"pixels": ')
    monkeypatch.setenv("IMGSEARCH_EVALUATION", str(tmp_path / "eval.json"))
    at = page(monkeypatch, index_dir)
    at.radio(key="view").set_value("Quality").run()
    assert not at.exception
    assert "The evaluation report at eval.json is unreadable" in at.warning[0].value
    assert not any("No evaluation report yet" in i.value for i in at.info)


# ---- a session across an index swap -----------------------------------------------------------

@pytest.fixture
def swapped(tmp_path, collection, checkpoint, monkeypatch):
    """A page on a 60-item index, and a function that swaps in a 5-item one under it."""
    out = tmp_path / "index"
    build_index(collection, checkpoint, out, search_k=2, maps=False, progress=False)
    at = page(monkeypatch, out)

    def swap():
        build_index(collection.subset(5), checkpoint, out, search_k=2, maps=False, progress=False)
    return at, swap


def test_a_kept_query_after_a_swap_is_cleared_with_a_sentence(swapped):
    at, swap = swapped
    at.number_input(key="item_number").set_value(45).run()
    swap()
    at.run()
    assert not at.exception, at.exception
    assert any("The collection changed" in i.value for i in at.info)
    assert at.number_input(key="item_number").max == 4 and at.number_input(key="item_number").value == 0
    at.number_input(key="item_number").set_value(3).run()
    assert not at.exception and re.search(r"<figcaption>Item 3(: [^<]+)?</figcaption>", " ".join(h.value for h in at.html))


def test_more_like_this_from_before_a_swap_does_not_raise(swapped):
    at, swap = swapped
    at.number_input(key="item_number").set_value(50).run()
    swap()
    at.button_group(key="more_code").set_value(0).run()  # the callback holds an id of the 60-item index
    assert not at.exception, at.exception
    assert any("The collection changed" in i.value for i in at.info)


@pytest.mark.parametrize("button", ["random", "random_class"])
def test_random_after_a_swap_answers_from_the_new_index(swapped, button):
    at, swap = swapped
    at.number_input(key="item_number").set_value(55).run()
    swap()
    for _ in range(5):
        at.button(key=button).click().run()
        assert not at.exception, at.exception
        assert 0 <= at.number_input(key="item_number").value < 5
        assert "<figcaption>Item " in " ".join(h.value for h in at.html)
