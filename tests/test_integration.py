"""The shipped checkpoint on the offline CIFAR-10 copy: a real index, real queries (a few thousand images)."""
import numpy as np
import pytest

from imgsearch.data import load_folder
from imgsearch.index import build_index
from imgsearch.model import DEFAULT_CHECKPOINT
from imgsearch.model import load_checkpoint
from imgsearch.search import Index

from conftest import OFFLINE

pytestmark = pytest.mark.skipif(not (OFFLINE / "test").is_dir(), reason="the offline CIFAR-10 copy is not beside the repository")


@pytest.fixture(scope="module")
def cifar_index(tmp_path_factory):
    collection = load_folder(OFFLINE / "test", progress=False).subset(3000, seed=1)
    out = tmp_path_factory.mktemp("cifar") / "index"
    build_index(collection, DEFAULT_CHECKPOINT, out, progress=False)
    return Index.load(out)


def test_shipped_checkpoint_describes_itself():
    model, info = load_checkpoint(DEFAULT_CHECKPOINT)
    assert info["model_args"]["code_dim"] == 256
    assert info["trained_on"]["items"] == 50_000 and "cifar10-jpg/train" in info["trained_on"]["collection"]
    assert info["losses"]["test_mse"] < 0.02


def test_query_by_file_path_finds_itself_first_in_both_spaces(cifar_index):
    path = cifar_index.paths[123]
    res = cifar_index.search(path, k=10, exclude_self=False)
    assert res.pixel[0].id == 123 and res.code[0].id == 123
    assert res.query_id == 123


def test_codes_find_the_query_class_more_often_than_pixels(cifar_index):
    rng = np.random.default_rng(0)
    agree = {"pixel": 0, "code": 0}
    for i in rng.choice(len(cifar_index), 200, replace=False):
        counts = cifar_index.search(int(i), k=10).agreement(cifar_index.label(int(i)))
        for space in agree:
            agree[space] += counts[space]
    assert agree["code"] > 1.3 * agree["pixel"], agree
