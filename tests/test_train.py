"""Training runs: resuming a killed run, presets, what a checkpoint records (tiny data, seconds)."""
import argparse
from dataclasses import asdict

import pytest
import torch

import imgsearch.train as tr
from imgsearch.model import ConvAutoEncoder, ModelArgs, load_checkpoint
from imgsearch.train import TrainArgs, preset, state_path, train

pytestmark = pytest.mark.numeric  # losses and codes that torch's kernels compute

TINY = ModelArgs(width=4, code_dim=16, proj_dim=8)


def tiny_args(**kw) -> TrainArgs:
    return TrainArgs(**{"epochs": 2, "batch_size": 16, "decoder_epochs": 1, "threads": 1, **kw})


class Killed(Exception):
    pass


def kill_after(monkeypatch, epochs: int):
    """Make the run die right after saving its state for the `epochs`-th time."""
    real, saved = tr._save_state, []

    def save_then_die(*a, **kw):
        real(*a, **kw)
        saved.append(1)
        if len(saved) == epochs:
            raise Killed
    monkeypatch.setattr(tr, "_save_state", save_then_die)


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.parametrize("killed_after", [1, 2])  # inside the joint stage; between it and the decoder stage
def test_resume_after_a_kill_ends_where_an_uninterrupted_run_ends(tmp_path, collection, monkeypatch, killed_after):
    whole = train(collection, tmp_path / "whole.pt", model_args=TINY, args=tiny_args(), progress=False,
                  test=collection, device="cpu")
    with monkeypatch.context() as m:
        kill_after(m, killed_after)
        with pytest.raises(Killed):
            train(collection, tmp_path / "killed.pt", model_args=TINY, args=tiny_args(), progress=False,
                  test=collection, device="cpu")
    assert not (tmp_path / "killed.pt").exists() and state_path(tmp_path / "killed.pt").is_file()
    resumed = train(collection, tmp_path / "killed.pt", model_args=TINY, args=tiny_args(), progress=False,
                    test=collection, resume=True, device="cpu")
    a, b = weights(tmp_path / "whole.pt"), weights(tmp_path / "killed.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = ("seconds", "cpu_seconds")
    strip = [{k: v for k, v in h.items() if k not in drop} for h in whole["history"]]
    assert strip == [{k: v for k, v in h.items() if k not in drop} for h in resumed["history"]]
    assert resumed["test_mse_before_decoder_tuning"] == whole["test_mse_before_decoder_tuning"]
    assert load_checkpoint(tmp_path / "killed.pt")[1]["training"]["sessions"] == 2


def test_resume_refuses_a_state_with_other_arguments(tmp_path, collection, monkeypatch):
    with monkeypatch.context() as m:
        kill_after(m, 1)
        with pytest.raises(Killed):
            train(collection, tmp_path / "m.pt", model_args=TINY, args=tiny_args(), progress=False, device="cpu")
    with pytest.raises(ValueError, match="train_args"):
        train(collection, tmp_path / "m.pt", model_args=TINY, args=tiny_args(lr=1e-4), progress=False,
              resume=True, device="cpu")


def test_presets_apply_and_flags_override_them(tmp_path, collection_dir, monkeypatch):
    assert preset("default") == (TrainArgs(), ModelArgs())
    shipped, _ = preset("shipped")
    assert asdict(shipped) == {**asdict(TrainArgs()), **{k: v for k, v in tr.PRESETS["shipped"].items()
                                                         if k in asdict(TrainArgs())}}
    assert preset("shipped", epochs=1)[0].epochs == 1
    with pytest.raises(ValueError, match="Unknown preset"):
        preset("nope")

    monkeypatch.setitem(tr.PRESETS, "tiny", {"epochs": 1, "batch_size": 16, "decoder_epochs": 0, "lr": 1e-3,
                                             "width": 4, "code_dim": 16, "proj_dim": 8})
    p = argparse.ArgumentParser()
    runner = tr.add_arguments(p)
    out = tmp_path / "cli.pt"
    assert runner(p.parse_args(["--data", str(collection_dir), "--out", str(out), "--preset", "tiny",
                                "--lr", "5e-4", "--threads", "1", "--device", "cpu"])) == 0
    _, info = load_checkpoint(out)
    assert info["train_args"]["preset"] == "tiny" and info["train_args"]["batch_size"] == 16
    assert info["train_args"]["lr"] == 5e-4  # the flag beats the preset
    assert info["model_args"]["width"] == 4


def test_checkpoint_holds_what_serving_needs_and_records_how_it_was_made(tmp_path, collection):
    path = tmp_path / "m.pt"
    train(collection, path, model_args=TINY, args=tiny_args(), progress=False, device="cpu")
    assert not any(k.startswith("projector.") for k in weights(path))
    model, info = load_checkpoint(path)
    assert info["machine"]["cpu"] and info["machine"]["threads"] == 1 and info["machine"]["device"] == "cpu"
    assert info["machine"]["torch"] == str(torch.__version__)
    assert len(info["training"]["epoch_seconds"]) == 3 and info["training"]["seconds"] >= 0
    assert info["train_args"]["epochs"] == 2 and info["model_args"]["width"] == 4
    assert model.encode(torch.rand(2, 3, 32, 32)).shape == (2, 16)


def test_checkpoints_with_a_projection_head_still_load(tmp_path):
    model = ConvAutoEncoder(TINY)
    path = tmp_path / "old.pt"
    torch.save({"format": "imgsearch-autoencoder-v1", "model_args": {"code_dim": 16, "width": 4, "proj_dim": 8},
                "preprocessing": {"size": 32}, "trained_on": {}, "train_args": {}, "losses": {},
                "state_dict": model.state_dict()}, path)
    loaded, _ = load_checkpoint(path)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.encode(x), model.eval().encode(x))


def test_device_auto_falls_back_to_the_cpu():
    if torch.cuda.is_available():
        assert tr.resolve_device("auto").type == "cuda"
    else:
        assert tr.resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="no CUDA"):
            tr.resolve_device("cuda")


def test_a_run_in_progress_can_be_exported_for_evaluation(tmp_path, collection, monkeypatch):
    with monkeypatch.context() as m:
        kill_after(m, 1)
        with pytest.raises(Killed):
            train(collection, tmp_path / "m.pt", model_args=TINY, args=tiny_args(), progress=False, device="cpu")
    tr.checkpoint_from_state(state_path(tmp_path / "m.pt"), tmp_path / "epoch1.pt")
    model, info = load_checkpoint(tmp_path / "epoch1.pt")
    assert info["training"]["epochs_done"] == 1 and info["losses"]["unfinished"]
    assert model.encode(torch.rand(2, 3, 32, 32)).shape == (2, 16)
