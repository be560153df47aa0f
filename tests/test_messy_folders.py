"""Real folders are messy: the build holds, counts what it skipped and why, and a full disk stops it cleanly."""
import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import make_image
from imgsearch import ingest, layout
from imgsearch.index import build_index, DiskFullError
from imgsearch.integrity import read_meta
from imgsearch.publish import resolve
from imgsearch.search import Index


def photos(root, n=6, prefix=""):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(make_image(i % 3, seed=i)).save(root / f"{prefix}{i:02d}.png")
    return root


def skipped(out) -> dict:
    return read_meta(resolve(out))["skipped_files"]


def test_files_added_deleted_and_rewritten_while_the_build_reads(tmp_path, checkpoint, monkeypatch):
    root = photos(tmp_path / "c")
    real = ingest.to_pixels
    done = []

    def meanwhile(path):  # the first decode: another program changes the folder under the build
        if not done:
            done.append(1)
            os.unlink(root / "03.png")
            Image.fromarray(make_image(1, seed=77)).save(root / "04.png")  # rewritten: other pixels, other size
            Image.fromarray(make_image(2, seed=78)).save(root / "99.png")  # added after the listing
        return real(path)
    monkeypatch.setattr(ingest, "to_pixels", meanwhile)
    out = tmp_path / "index"
    summary = build_index(str(root), checkpoint, out, progress=False, maps=False)
    assert summary["items"] == 5 and [os.path.basename(p) for p, _ in summary["skipped"]] == ["03.png"]
    assert skipped(out) == {"reasons": {"is not a file.": 1}, "first": [["03.png", "is not a file."]]}
    index = Index.load(out)
    assert np.array_equal(index.pixels[[index.name(i) for i in range(5)].index("04.png")], make_image(1, seed=77))
    monkeypatch.setattr(ingest, "to_pixels", real)
    update = build_index(str(root), checkpoint, out, progress=False, maps=False, update=True)["update"]
    assert (update["added"], update["changed"], update["removed"], update["unchanged"]) == (1, 1, 0, 4)


def test_unreadable_files_and_symlink_loops_are_skipped_with_their_reasons(tmp_path, checkpoint, monkeypatch):
    root = photos(tmp_path / "c")
    (root / "locked.png").write_bytes((root / "00.png").read_bytes())
    os.chmod(root / "locked.png", 0)
    if os.geteuid() == 0:  # root reads a file whatever its mode: make this one refuse as it would refuse others
        read_bytes = type(root).read_bytes
        monkeypatch.setattr(type(root), "read_bytes", lambda p: (_ for _ in ()).throw(PermissionError(
            errno.EACCES, "Permission denied")) if p.name == "locked.png" else read_bytes(p))
    (root / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a broken link
    (root / "loop-a.png").symlink_to(root / "loop-b.png")  # a loop of links
    (root / "loop-b.png").symlink_to(root / "loop-a.png")
    (root / "around").symlink_to(root, target_is_directory=True)  # a folder loop: never followed
    (root / "folder.png").mkdir()  # a folder with an image's name
    out = tmp_path / "index"
    assert build_index(str(root), checkpoint, out, progress=False, maps=False)["items"] == 6
    s = skipped(out)
    assert s["reasons"] == {"could not be read (Too many levels of symbolic links).": 2,
                            "could not be read (No such file or directory).": 1,
                            "could not be read (Permission denied).": 1}
    assert [name for name, _ in s["first"]] == ["gone.png", "loop-a.png", "loop-b.png", "locked.png"]
    assert read_meta(resolve(out))["skipped"] == 4


def test_names_with_spaces_emoji_and_bytes_that_are_not_utf8(tmp_path, checkpoint, capsys):
    from imgsearch import cli
    from imgsearch.search import printable

    root = photos(tmp_path / "c", 3)
    names = ["a photo with spaces.png", "🐱 cat.png", os.fsdecode(b"caf\xe9.png")]
    for i, name in enumerate(names):
        os.rename(root / f"{i:02d}.png", os.path.join(root, name))
    (root / "also not utf8 \udce9.txt").write_bytes(b"text")  # skipped, by its name too
    out = tmp_path / "index"
    assert build_index(str(root), checkpoint, out, progress=False, maps=False)["items"] == 3
    index = Index.load(out)
    assert sorted(index.name(i) for i in range(3)) == sorted(names)
    assert printable(os.fsdecode(b"caf\xe9.png")) == "caf\ufffd.png"
    assert index.preview(0).size == (160, 160)  # 32x32 files: enlarged
    assert cli.main(["search", os.path.join(root, names[1]), "--index", str(out), "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert {h["name"] for h in hits["pixel"]} == {names[0], names[2]}
    assert cli.main(["search", os.path.join(root, names[1]), "--index", str(out), "-k", "2"]) == 0
    assert "caf\ufffd.png" in capsys.readouterr().out
    assert skipped(out)["first"] == [["also not utf8 \udce9.txt", "is not an image format this tool can read."]]


def test_many_non_image_files_beside_the_images(tmp_path, checkpoint):
    root = photos(tmp_path / "c")
    for i in range(1500):
        (root / f"notes-{i:04d}.txt").write_text("not a picture")
    out = tmp_path / "index"
    summary = build_index(str(root), checkpoint, out, progress=False, maps=False)
    assert summary["items"] == 6 and len(summary["skipped"]) == 1500
    s = skipped(out)
    assert s["reasons"] == {"is not an image format this tool can read.": 1500} and len(s["first"]) == 20


def test_a_disk_that_fills_stops_the_build_with_one_sentence_and_it_resumes(tmp_path, checkpoint, monkeypatch):
    root = photos(tmp_path / "c", 9)
    out = tmp_path / "index"
    build_index(str(root), checkpoint, out, progress=False, maps=False)
    live = resolve(out)
    photos(root, 3, prefix="new-")
    real = np.savez
    writes = []

    def filling(f, **arrays):  # the second batch file finds the disk full
        writes.append(1)
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, **arrays)
    monkeypatch.setattr(ingest.np, "savez", filling)
    with pytest.raises(DiskFullError, match=r"^The disk filled up .*the index in use is unchanged.*continues"):
        build_index(str(root), checkpoint, out, progress=False, maps=False, batch_size=4)
    assert resolve(out) == live and Index.load(out).meta["items"] == 9  # still serving the old index
    work = list((tmp_path / "index.builds").glob("*.work"))
    assert len(work) == 1 and sorted(p.name for p in work[0].glob("batch-*")) == ["batch-000000.npz"]
    assert not list((tmp_path / "index.builds").glob("*.partial"))
    monkeypatch.setattr(ingest.np, "savez", real)
    summary = build_index(str(root), checkpoint, out, progress=False, maps=False, batch_size=4)
    assert summary["items"] == 12 and read_meta(resolve(out))["ingest"]["resumed_batches"] == 1


def test_the_sidebar_lists_the_first_skipped_names_with_their_reasons(tmp_path, checkpoint, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT

    root = photos(tmp_path / "c", 3)
    for i in range(25):
        (root / f"readme-{i:02d}.txt").write_text("x")
    out = tmp_path / "index"
    build_index(str(root), checkpoint, out, progress=False, maps=False)
    monkeypatch.setenv("IMGSEARCH_INDEX", str(out))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    text = " ".join(m.value for m in at.sidebar.markdown)
    assert "25: is not an image format this tool can read." in text
    assert "`readme-19.txt`: is not an image format" in text and "readme-20.txt" not in text
    assert str(root) not in text
