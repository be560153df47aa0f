"""The command-line scripts, run as a person runs them."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT, make_image


def run(*args, **kw):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


def test_build_index_then_search(tmp_path, collection_dir, checkpoint):
    (collection_dir.parent / "junk").mkdir(exist_ok=True)
    out = tmp_path / "idx"
    r = run("scripts/build_index.py", "--data", str(collection_dir), "--model", str(checkpoint), "--out", str(out),
            "--n-trees", "3")
    assert r.returncode == 0, r.stderr
    assert "Indexed 60 images" in r.stdout

    query = tmp_path / "query.png"
    Image.fromarray(make_image(0, 999)).resize((64, 64)).save(query)  # a red image, not in the collection
    r = run("scripts/search.py", str(query), "--index", str(out), "-k", "4", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert set(res) == {"pixel", "code"}
    for hits in res.values():
        assert len(hits) == 4
        assert set(hits[0]) == {"id", "distance", "label", "path", "name"}
    assert all(h["label"] == "red" for h in res["pixel"])

    r = run("scripts/search.py", str(query), "--index", str(out), "-k", "3")
    assert r.returncode == 0 and "pixel space" in r.stdout and "code space" in r.stdout


@pytest.mark.parametrize("content", [b"definitely not an image", b""])
def test_search_on_a_bad_file_is_one_sentence(tmp_path, index_dir, content):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(content)
    r = run("scripts/search.py", str(bad), "--index", str(index_dir))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")


def test_search_without_an_index_is_one_sentence(tmp_path):
    r = run("scripts/search.py", str(tmp_path / "x.png"), "--index", str(tmp_path / "none"))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "build_index.py" in r.stderr


def test_build_index_on_a_missing_folder_is_one_sentence(tmp_path):
    r = run("scripts/build_index.py", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "i"))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "not a folder" in r.stderr


def test_imgsearch_command_lists_every_subcommand():
    r = subprocess.run([str(Path(sys.executable).parent / "imgsearch"), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for name in ("train", "build-index", "search", "evaluate", "benchmark", "serve"):
        assert name in r.stdout


def test_scripts_and_subcommands_are_one_program():
    r = run("scripts/build_index.py", "--help")
    assert r.returncode == 0 and "--n-trees" in r.stdout and "scripts/build_index.py" in r.stdout
    assert "sys.path" not in "".join(p.read_text() for p in (ROOT / "scripts").glob("*.py"))
