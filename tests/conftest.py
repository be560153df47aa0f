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
from imgsearch.index import build_index
from imgsearch.integrity import CHECKSUM, file_checksum
from imgsearch.publish import resolve
from imgsearch.model import ConvAutoEncoder, ModelArgs, save_checkpoint



def pytest_report_header(config):
    """The kernels this run computes with: float results differ in the last bits between them."""
    import platform

    import faiss
    import threadpoolctl
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    blas = sorted({f"{i['internal_api']} {i.get('architecture')}" for i in threadpoolctl.threadpool_info()
                   if i.get("architecture")})
    simd = faiss.SIMDConfig.get_level() if hasattr(faiss, "SIMDConfig") else "n/a"
    return [f"cpu: {cpu}; torch kernels: {torch.backends.cpu.get_cpu_capability()}; BLAS: {', '.join(blas)}; "
            f"faiss SIMD level: {simd}"]


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


# ---- tolerances from float32 arithmetic ---------------------------------------------------------
# Torch, OpenBLAS and faiss pick different kernels on different CPUs (and under ATEN_CPU_CAPABILITY,
# OPENBLAS_CORETYPE, FAISS_OPT_LEVEL): the same float32 sums come out in different orders, so results
# agree only up to rounding. These bounds say how far, from the arithmetic, not from one machine.
U32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff of float32


def dot_slack(terms: int, scale: float) -> float:
    """Worst-case rounding of a float32 dot product of `terms` products whose absolute values sum to at
    most `scale` (Higham's gamma_n = n u / (1 - n u) bound); two code paths may each be off by this."""
    return terms * U32 / (1 - terms * U32) * scale


def angular_slack(dim: int) -> float:
    """How far from 0 the angular distance sqrt(2 - 2 cos) of a vector to itself can come out in float32:
    cos is a dot product of two unit vectors of `dim` entries, off by at most dot_slack(dim, 1) (twice,
    for the normalisations), and the square root magnifies that."""
    return float(np.sqrt(2 * 3 * dot_slack(dim, 1.0)))
