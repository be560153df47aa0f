"""Small generated data, shared by the tests: a labelled folder of images, a tiny model, an index."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

from imgsearch.data import load_folder
from imgsearch import layout
from imgsearch.index import CHECKSUM, build_index, file_checksum, resolve
from imgsearch.model import ConvAutoEncoder, ModelArgs, save_checkpoint

OFFLINE = ROOT.parent / "shared" / "datasets" / "cifar10-jpg"
CLASSES = ("blue", "green", "red")


def make_image(colour: int, seed: int) -> np.ndarray:
    """A 32x32 image dominated by one channel, with noise and a random bright square."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (32, 32, 3))
    img[..., colour] += 150
    y, x = rng.integers(0, 24, 2)
    img[y:y + 8, x:x + 8] += 40
    return np.clip(img, 0, 255).astype(np.uint8)


def write_collection(root: Path, per_class: int = 20) -> Path:
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(make_image(2 - c, seed=c * 1000 + i)).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def collection_dir(tmp_path_factory) -> Path:
    return write_collection(tmp_path_factory.mktemp("collection"))


@pytest.fixture(scope="session")
def collection(collection_dir):
    return load_folder(collection_dir, progress=False)


def tiny_checkpoint(path: Path, code_dim: int = 64, seed: int = 0) -> Path:
    """An untrained but deterministic tiny model: search tests need a fixed encoder, not a good one."""
    import torch

    torch.manual_seed(seed)
    model = ConvAutoEncoder(ModelArgs(code_dim=code_dim, width=4, proj_dim=8))
    model.eval()
    save_checkpoint(model, path, trained_on={"collection": "test", "items": 0, "classes": []},
                    losses={}, train_args={"seed": seed})
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory, collection, checkpoint) -> Path:
    out = tmp_path_factory.mktemp("index") / "index"
    build_index(collection, checkpoint, out, n_trees=4, search_k=1000, progress=False)
    return out


@pytest.fixture(scope="session")
def annoy_index_dir(index_dir) -> Path:
    """The index with the code space on Annoy's trees: the default build's."""
    return index_dir


@pytest.fixture(scope="session")
def faiss_index_dir(tmp_path_factory, collection, checkpoint) -> Path:
    """The same collection with the code space on faiss's lists (`--code-index faiss`)."""
    out = tmp_path_factory.mktemp("faiss-index") / "index"
    build_index(collection, checkpoint, out, code_index="faiss", probes=4, maps=False, progress=False)
    return out


@pytest.fixture
def copy_of(index_dir, tmp_path):
    """A private copy of the shared index's build directory, for tests that damage it."""
    dst = tmp_path / "copy"
    shutil.copytree(resolve(index_dir), dst)
    return dst


@pytest.fixture
def annoy_copy_of(copy_of):
    """A private copy of the index on Annoy's trees: the default build's."""
    return copy_of


@pytest.fixture
def faiss_copy_of(faiss_index_dir, tmp_path):
    """A private copy of the faiss index's build directory."""
    dst = tmp_path / "faiss-copy"
    shutil.copytree(resolve(faiss_index_dir), dst)
    return dst


def edit_meta(directory, change):
    meta = json.loads((directory / layout.META).read_text())
    change(meta)
    (directory / layout.META).write_text(json.dumps(meta))


def reseal(directory):
    """Record the files' current checksums, so a test can reach the checks that come after them."""
    def change(meta):
        meta["checksums"] = {p.name: {"bytes": p.stat().st_size, CHECKSUM: file_checksum(p)}
                             for p in directory.iterdir() if p.name != layout.META}
    edit_meta(directory, change)
