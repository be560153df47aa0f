"""Collections: a folder in every shape, and CIFAR-10 from torchvision's exact on-disk format."""
import errno
import hashlib
import pickle
import urllib.error

import numpy as np
import pytest
from PIL import Image

from imgsearch.data import CollectionError, load_cifar10, load_collection, load_folder

from conftest import CLASSES, OFFLINE, make_image


def test_labelled_folder(collection_dir):
    c = load_folder(collection_dir, progress=False)
    assert len(c) == 60 and c.classes == list(CLASSES)
    assert c.pixels.shape == (60, 32, 32, 3) and c.pixels.dtype == np.uint8
    assert (np.bincount(c.labels) == 20).all()
    # row i of pixels is the file at paths[i], with the class of its folder
    i = 25
    assert c.paths[i].endswith(f"{CLASSES[c.labels[i]]}/{i - 20:03d}.png")
    assert (np.asarray(Image.open(c.paths[i])) == c.pixels[i]).all()


def test_flat_folder_has_no_labels(tmp_path):
    for i in range(3):
        Image.fromarray(make_image(i, i)).save(tmp_path / f"{i}.jpg")
    c = load_folder(tmp_path, progress=False)
    assert len(c) == 3 and c.classes == [] and (c.labels == -1).all() and not c.has_labels


def test_nested_folders_take_the_top_level_class(tmp_path):
    (tmp_path / "cats" / "indoor" / "deep").mkdir(parents=True)
    (tmp_path / "dogs").mkdir()
    Image.fromarray(make_image(0, 1)).save(tmp_path / "cats" / "indoor" / "deep" / "a.png")
    Image.fromarray(make_image(1, 2)).save(tmp_path / "dogs" / "b.png")
    Image.fromarray(make_image(2, 3)).save(tmp_path / "loose.png")
    c = load_folder(tmp_path, progress=False)
    assert c.classes == ["cats", "dogs"]
    assert [c.label_name(i) for i in range(len(c))] == [None, "cats", "dogs"]  # walk order: root files first


def test_broken_files_are_skipped_and_counted(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(make_image(0, 1)).save(tmp_path / "a" / "good.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "empty.jpg").write_bytes(b"")
    (tmp_path / "a" / "cut.png").write_bytes((tmp_path / "a" / "good.png").read_bytes()[:50])
    c = load_folder(tmp_path, progress=False)
    assert len(c) == 1 and len(c.skipped) == 3
    assert all(isinstance(why, str) and why for _, why in c.skipped)


def test_missing_or_empty_folder_says_what_to_do(tmp_path):
    with pytest.raises(CollectionError, match="not a folder"):
        load_collection(str(tmp_path / "nope"))
    with pytest.raises(CollectionError, match="no readable images"):
        load_folder(tmp_path, progress=False)


def write_cifar_archive(root, n_per_batch=4):
    """Write cifar-10-batches-py/ exactly as the real archive unpacks (pickled dicts, CHW rows)."""
    from torchvision.datasets import CIFAR10

    base = root / CIFAR10.base_folder
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [n for n, _ in CIFAR10.train_list] + [n for n, _ in CIFAR10.test_list]
    expected = {}
    for k, name in enumerate(names):
        images = rng.integers(0, 256, (n_per_batch, 32, 32, 3), dtype=np.uint8)
        labels = [(k + j) % 10 for j in range(n_per_batch)]
        # The real batches are Python 2 pickles whose str keys load as str under encoding="latin1".
        entry = {"batch_label": name, "labels": labels, "data": images.transpose(0, 3, 1, 2).reshape(n_per_batch, -1),
                 "filenames": [f"{name}_{j}.png" for j in range(n_per_batch)]}
        (base / name).write_bytes(pickle.dumps(entry, protocol=2))
        expected[name] = (images, labels)
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
            "num_cases_per_batch": n_per_batch}
    (base / CIFAR10.meta["filename"]).write_bytes(pickle.dumps(meta, protocol=2))
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in base.iterdir()}
    return expected, md5


def test_cifar10_loader_reads_torchvisions_format(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    expected, md5 = write_cifar_archive(tmp_path)
    # The checksums are the only thing that differs from the real archive.
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5[n]] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, md5[n]] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    train = load_cifar10("train", root=tmp_path)
    test = load_cifar10("test", root=tmp_path)
    assert len(train) == 20 and len(test) == 4 and train.spec == "cifar10" and test.spec == "cifar10:test"
    assert train.classes[0] == "airplane" and train.classes[-1] == "truck"
    assert (train.pixels[:4] == expected["data_batch_1"][0]).all()
    assert list(test.labels) == expected["test_batch"][1]
    assert train.paths == [None] * 20


def test_cifar10_without_network_says_how_to_use_a_folder(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(CollectionError, match="could not be downloaded.*--data") as e:
        load_cifar10("train", root=tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("error, words", [
    (urllib.error.URLError("no network"), "could not be downloaded.*--data"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "could not be downloaded"),
    (TimeoutError("timed out"), "could not be downloaded"),
    (RuntimeError("File not found or corrupted."), "could not be downloaded"),  # torchvision: download cut short
    (PermissionError(errno.EACCES, "Permission denied"), r"could not be stored in .*\(Permission denied\)"),
    (OSError(errno.ENOSPC, "No space left on device"), r"\(No space left on device\).*IMGSEARCH_DATA_DIR"),
    (ValueError("bad pickle data"), r"could not be loaded .*\(ValueError: bad pickle data\)"),
])
def test_cifar10_failures_name_their_real_cause(tmp_path, monkeypatch, error, words):
    import torchvision.datasets

    def fail(*a, **k):
        raise error

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fail)
    with pytest.raises(CollectionError, match=words) as e:
        load_cifar10("train", root=tmp_path)
    assert "\n" not in str(e.value) and str(e.value).endswith(".")
    if "downloaded" not in words:  # a full disk is not a missing network
        assert "downloaded" not in str(e.value) and "network" not in str(e.value)


@pytest.mark.skipif(not OFFLINE.is_dir(), reason="the offline CIFAR-10 copy is not beside the repository")
def test_offline_copy_works_as_a_folder_collection():
    c = load_folder(OFFLINE / "test" / "frog", progress=False)
    assert len(c) == 1000 and c.classes == [] and c.pixels.shape == (1000, 32, 32, 3)
    assert 100 < c.pixels.mean() < 140


def test_a_folder_is_listed_in_walk_order_without_hidden_files_or_linked_folders(tmp_path):
    from imgsearch.data import list_folder

    for rel in ("top.png", ".hidden.png", "b/1.png", "b/0.png", "b/deep/2.png", "b/.cache/3.png", "a/9.png",
                ".git/x.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * len(rel))
    (tmp_path / "linked").symlink_to(tmp_path / "a", target_is_directory=True)  # not followed: a loop, or a copy
    (tmp_path / "b" / "also.png").symlink_to(tmp_path / "a" / "9.png")  # a linked file counts, with its target's size
    (tmp_path / "b" / "broken.png").symlink_to(tmp_path / "gone.png")  # nothing to read: left out
    listing = list_folder(tmp_path)
    rel = [p[len(listing.root) + 1:] for p in listing.paths]
    # a folder's files, then its subfolders, each in name order; the first subfolder is the class
    assert rel == ["top.png", "a/9.png", "b/0.png", "b/1.png", "b/also.png", "b/deep/2.png"]
    assert listing.classes == ["a", "b"] and listing.labels.tolist() == [-1, 0, 1, 1, 1, 1]
    assert listing.stats[:, 0].tolist() == [7, 7, 7, 7, 7, 12]
