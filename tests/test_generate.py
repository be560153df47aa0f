"""The decoder as a generator: slerp between two codes, the strip of decoded steps, the grid along code
space's main directions; in Python, on the command line and on the page."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, make_image, tiny_checkpoint
from test_app import app, captions, png  # noqa: F401 - the page under AppTest, its picture captions, a PNG
from test_hardening_app import swapped  # noqa: F401 - a page whose index is swapped under it

from imgsearch.generate import direction_codes, slerp, strip
from imgsearch.search import Index

F32 = np.finfo(np.float32).eps


@pytest.fixture(scope="module")
def index(tmp_path_factory, collection):
    """The test collection's index by the tiny model made to act a little like a trained one. Untrained,
    its codes lie near one another (cosine ~0.95, length ~0.2) and its decoder barely responds to its
    input: every step comes out the same grey, one level apart at most. So the code's batch-norm gets
    the collection's statistics (as training sets them), and the decoder's first layer 16x its weights
    (adjacent steps of the test below then differ by 8 to 12 levels somewhere)."""
    import torch

    from imgsearch.index import build_index
    from imgsearch.model import load_checkpoint, pixels_to_tensor, save_checkpoint

    path = tiny_checkpoint(tmp_path_factory.mktemp("calibrated") / "tiny.pt")
    model, info = load_checkpoint(path)
    with torch.no_grad():
        before = model.encoder[:-1](pixels_to_tensor(collection.pixels))
        model.encoder[-1].running_mean.copy_(before.mean(0))
        model.encoder[-1].running_var.copy_(before.var(0))
        model.decoder_in[0].weight.mul_(16)
    save_checkpoint(model, path, trained_on=info["trained_on"], losses={}, train_args={})
    out = path.parent / "index"
    build_index(collection, path, out, spaces=["code"], maps=False, progress=False)
    return Index.load(out)


# ---- slerp, by hand --------------------------------------------------------------------------

@pytest.mark.numeric
def test_slerp_turns_the_direction_evenly_and_changes_the_length_linearly():
    codes = slerp([1.0, 0.0], [0.0, 2.0], 3)
    half = 1.5 / np.sqrt(2)  # halfway: 45 degrees, length (1 + 2) / 2
    np.testing.assert_allclose(codes, [[1, 0], [half, half], [0, 2]], rtol=0, atol=1e-12)
    codes = slerp([3.0, 0.0, 0.0], [0.0, 0.0, -3.0], 7)
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 3.0, rtol=1e-12)
    turns = np.arccos(np.clip(np.sum(codes[:-1] * codes[1:], axis=1) / 9.0, -1, 1))
    np.testing.assert_allclose(turns, np.pi / 2 / 6, rtol=1e-6)  # a quarter turn in six equal steps


@pytest.mark.numeric
def test_slerp_of_one_direction_changes_only_the_length_and_refuses_what_it_cannot_do():
    np.testing.assert_allclose(slerp([1.0, 1.0], [2.0, 2.0], 3), [[1, 1], [1.5, 1.5], [2, 2]], rtol=1e-12)
    for a, b, steps, words in (([1.0, 0.0], [-1.0, 0.0], 8, "opposite"), ([0.0, 0.0], [1.0, 0.0], 8, "length zero"),
                               ([1.0, 0.0], [0.0, 1.0], 1, "between 2 and 64")):
        with pytest.raises(ValueError, match=words):
            slerp(a, b, steps)


# ---- Index.interpolate ----------------------------------------------------------------------

@pytest.mark.numeric
def test_interpolation_ends_decode_to_the_ends_reconstructions(index):
    upload = make_image(1, 777)  # not in the collection: encoded as an upload is
    result = index.between(5, upload, steps=8)
    assert result.codes.shape == (8, 64) and result.codes.dtype == np.float32
    # The ends are the ends' codes to float32 rounding (slerp computes in float64).
    np.testing.assert_allclose(result.codes[0], index.codes[5], rtol=2 * F32, atol=2 * F32 * np.linalg.norm(index.codes[5]))
    end = index.encode(upload)
    np.testing.assert_allclose(result.codes[-1], end, rtol=2 * F32, atol=2 * F32 * np.linalg.norm(end))
    # reconstruct() encodes with the unfolded encoder, the index with the folded one: the codes differ in
    # float32 rounding (~1e-5 relative), far below half a level of a uint8 pixel, which may still round
    # the other way at a boundary: at most one level apart.
    for got, pixels in ((result.pixels[0], index.thumbnail(5)), (result.pixels[-1], upload)):
        assert np.abs(got.astype(int) - index.reconstruct(pixels).astype(int)).max() <= 1


@pytest.mark.numeric
def test_interpolation_steps_are_distinct_images_with_their_nearest_items(index):
    pixels = index.interpolate(3, 45)  # a blue item and a red one
    assert pixels.shape == (8, 32, 32, 3) and pixels.dtype == np.uint8
    steps = pixels.astype(int)
    assert all(np.abs(steps[i] - steps[i + 1]).max() >= 4 for i in range(7))  # distinct, by more than rounding
    result = index.between(3, 45, steps=5)
    assert result.pixels.shape == (5, 32, 32, 3) and result.nearest.shape == (5,) and result.nearest.dtype == np.int64
    assert result.nearest[0] == 3 and result.nearest[-1] == 45  # each end is nearest itself
    # An item's angular distance to itself: sqrt(2 - 2 cos), cos off 1 by float32 rounding of a 64-d dot product.
    assert np.all(result.distances[[0, -1]] <= np.sqrt(2 * 64 * F32)) and np.all(result.distances >= 0)


def test_interpolation_takes_every_kind_of_query_and_says_what_is_wrong(index, tmp_path):
    path = tmp_path / "q.png"
    Image.fromarray(make_image(0, 4)).resize((48, 48)).save(path)
    assert index.interpolate(str(path), path.read_bytes(), steps=3).shape == (3, 32, 32, 3)
    with pytest.raises(IndexError, match="does not exist"):
        index.interpolate(0, 10_000)
    with pytest.raises(ValueError, match="between 2 and 64"):
        index.interpolate(0, 1, steps=1)


def test_the_nearest_items_fall_back_to_an_exact_search_without_a_code_space(index, monkeypatch):
    served = index.nearest_items(index.codes[[7, 50]])
    monkeypatch.setattr(index, "spaces", {k: v for k, v in index.spaces.items() if k != "code"})
    exact = index.nearest_items(index.codes[[7, 50]])
    assert served[0].tolist() == exact[0].tolist() == [7, 50]


# ---- the grid along code space's main directions ----------------------------------------------

@pytest.mark.numeric
def test_direction_codes_move_the_mean_along_the_top_directions_by_their_spread():
    # Mean (0, 0); variance 2 along x, 0.5 along y: the top directions are x then y, with spreads sqrt 2, sqrt .5.
    codes = np.array([[2, 0], [-2, 0], [0, 1], [0, -1], [2, 0], [-2, 0], [0, 1], [0, -1]], np.float32)
    moved, explained = direction_codes(codes, np.arange(8), directions=2, spreads=(-1.0, 0.0, 2.0))
    want = np.array([[[-np.sqrt(2), 0], [0, 0], [2 * np.sqrt(2), 0]], [[0, -np.sqrt(0.5)], [0, 0], [0, 2 * np.sqrt(0.5)]]])
    np.testing.assert_allclose(moved, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(explained, [0.8, 0.2], rtol=1e-5)
    moved, _ = direction_codes(codes, np.array([0, 4]), directions=1, spreads=(0.0, 1.0))  # the mean of (2, 0) twice
    np.testing.assert_allclose(moved, [[[2, 0], [2 + np.sqrt(2), 0]]], rtol=0, atol=1e-5)


@pytest.mark.numeric
def test_the_direction_grid_of_a_class(index):
    from imgsearch.generate import direction_grid

    grid = direction_grid(index.model, index.codes, index.items_of("green"))
    assert grid.pixels.shape == (3, 5, 32, 32, 3) and grid.pixels.dtype == np.uint8 and grid.spreads == (-2, -1, 0, 1, 2)
    np.testing.assert_array_equal(grid.codes[:, 2], grid.codes[[0, 0, 0], 2])  # the middle column: the mean code
    # decoded in one batch, where a row's place may change its float rounding: at most a level apart
    assert all(np.abs(grid.pixels[d, 2].astype(int) - grid.pixels[0, 2]).max() <= 1 for d in range(3))
    assert np.all(np.diff(grid.explained) <= 0) and grid.explained.sum() <= 1


def test_a_strip_is_its_images_side_by_side_each_pixel_a_square():
    a, b = np.zeros((2, 32, 32, 3), np.uint8), np.full((2, 32, 32, 3), 200, np.uint8)
    a[1, 0, 0] = 255
    image = np.asarray(strip([a, b], scale=3))
    assert image.shape == (2 * 96, 2 * 96, 3)
    assert (image[:3, 96:99] == 255).all() and (image[:3, 99:102] == 0).all() and (image[96:] == 200).all()


# ---- imgsearch interpolate --------------------------------------------------------------------

def test_the_command_writes_the_strip(index_dir, tmp_path, capsys):
    from imgsearch.cli import main

    query = tmp_path / "query.png"
    Image.fromarray(make_image(2, 31)).save(query)
    out = tmp_path / "strip.png"
    assert main(["interpolate", "3", str(query), "--steps", "6", "--out", str(out), "--index", str(index_dir)]) == 0
    assert Image.open(out).size == (6 * 32 * 4, 32 * 4) and "6 steps" in capsys.readouterr().out
    assert main(["interpolate", "3", "45", "--out", str(out), "--index", str(index_dir), "--nearest", "--scale", "2"]) == 0
    assert Image.open(out).size == (8 * 64, 2 * 64) and "nearest items: 3 (blue)" in capsys.readouterr().out
    assert main(["interpolate", "3", "99999", "--out", str(out), "--index", str(index_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Item 99999 does not exist") and len(err.strip().splitlines()) == 1


def test_the_script_is_the_command():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's package, whatever the environment installed
    r = subprocess.run([sys.executable, "scripts/interpolate.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0 and "--steps" in r.stdout and "scripts/interpolate.py" in r.stdout


# ---- the page -----------------------------------------------------------------------------------

def test_between_draws_the_strip_with_the_nearest_items_beneath(app):  # noqa: F811 - app is test_app's fixture
    app.number_input(key="item_number").set_value(10).run()
    between = app.button_group(key="between_code")
    assert between.label == "Between the query and a code space result"
    between.set_value(2).run()
    assert not app.exception
    caps = captions(app)
    steps = [c for c in caps if c.startswith("step ")]
    assert steps == [f"step {i}" for i in range(1, 9)]
    assert caps[caps.index("step 1") + 1] == "item 10 · blue"  # beneath the first step: the query itself
    assert any("Between the query and code space result #3" in m.value for m in app.markdown)
    assert app.button_group(key="between_code").value is None  # released, as "More like this" is
    app.number_input(key="item_number").set_value(11).run()  # a new query: the strip was the old one's
    assert not [c for c in captions(app) if c.startswith("step ")]


def test_the_map_view_shows_what_a_code_direction_means(app):  # noqa: F811
    app.radio(key="view").set_value("Map").run()
    app.selectbox(key="directions_class").set_value("blue").run()
    assert not app.exception
    assert captions(app)[-15:] == ["−2σ", "−1σ", "mean", "+1σ", "+2σ"] * 3
    assert [c.value for c in app.caption if c.value.startswith("Direction")] == [f"Direction {d}: {share:.1%} of the codes' variance" for d, share in
                                                   enumerate(class_directions_of(app, "blue"), 1)]
    assert any("mean code of **blue**" in m.value for m in app.markdown)


def class_directions_of(app, label):
    """The shares of variance the page should show: the package's, for the page's index."""
    from imgsearch.generate import direction_grid

    index = Index.load(app.session_state["build"])
    return direction_grid(index.model, index.codes, index.items_of(label)).explained


def test_between_starts_from_an_upload_too(app):  # noqa: F811
    app.file_uploader(key="upload").upload("red.png", png(make_image(0, 12345)), "image/png").run()
    app.button_group(key="between_pixel").set_value(0).run()
    assert not app.exception
    assert [c for c in captions(app) if c.startswith("step ")] == [f"step {i}" for i in range(1, 9)]
    assert any("Between the query and pixel space result #1" in m.value for m in app.markdown)


def test_between_from_before_a_swap_does_not_raise_and_the_directions_need_no_maps(swapped):
    at, swap = swapped
    at.number_input(key="item_number").set_value(50).run()
    swap()
    at.button_group(key="between_code").set_value(0).run()  # the callback holds an id of the 60-item index
    assert not at.exception, at.exception
    assert any("The collection changed" in i.value for i in at.info)
    assert not [c for c in captions(at) if c.startswith("step ")]
    at.radio(key="view").set_value("Map").run()  # this index was built without maps
    assert not at.exception and any("no 2-D maps" in i.value for i in at.info)
    assert captions(at)[-5:] == ["−2σ", "−1σ", "mean", "+1σ", "+2σ"]
