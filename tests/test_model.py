"""The auto-encoder: shapes, finite outputs, gradients everywhere, safe self-describing checkpoints."""
import pickle

import numpy as np
import pytest
import torch

from imgsearch.model import (CheckpointError, ConvAutoEncoder, ModelArgs, encode_pixels, load_checkpoint,
                             reconstruct, save_checkpoint)
from imgsearch.train import TrainArgs, augment, info_nce, train

pytestmark = pytest.mark.numeric  # what torch's kernels compute


def test_shapes_and_no_nan():
    m = ConvAutoEncoder(ModelArgs(width=8))
    x = torch.rand(5, 3, 32, 32)
    code = m.encode(x)
    assert code.shape == (5, 256)
    out = m.decode(code)
    assert out.shape == (5, 3, 32, 32) and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(m.eval()(x), m.decode(m.encode(x)))


def test_every_parameter_gets_a_gradient():
    m = ConvAutoEncoder(ModelArgs(width=8, code_dim=32))
    x = torch.rand(6, 3, 32, 32)
    code = m.encode(x)
    loss = (m.decode(code) - x).pow(2).mean() + info_nce(m.project(code[:3]), m.project(code[3:]), 0.2)
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_code_is_the_only_path_to_the_decoder():
    m = ConvAutoEncoder(ModelArgs(width=8, code_dim=32)).eval()
    x1, x2 = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    code = m.encode(x1)
    m(x2)  # a forward pass on another image leaves no state behind
    assert torch.equal(m.decode(code), m(x1))


def _model_with_running_statistics(depth: int = 1) -> ConvAutoEncoder:
    """A model whose batch-norms hold statistics of their own, not the identity they start as."""
    torch.manual_seed(0)
    m = ConvAutoEncoder(ModelArgs(width=8, code_dim=32, depth=depth)).train()
    with torch.no_grad():
        for _ in range(3):
            m.encode(torch.rand(16, 3, 32, 32) * 3 - 1)
    return m.eval()


@pytest.mark.parametrize("depth", [1, 2])
def test_folded_encoder_computes_the_eval_mode_encoder(depth):
    m = _model_with_running_statistics(depth)
    folded = m.inference_encoder()
    assert not any(isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) for layer in folded.modules())
    x = torch.rand(7, 3, 32, 32)
    with torch.no_grad():
        expected = m.encode(x)
        assert torch.allclose(folded(x), expected, atol=1e-5, rtol=1e-4)
    pixels = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        by_model = m.encode(torch.tensor(pixels).permute(0, 3, 1, 2).float() / 255).numpy()
    assert np.allclose(encode_pixels(m, pixels, batch_size=3), by_model, atol=1e-5, rtol=1e-4)


def test_folding_leaves_the_model_alone_and_follows_its_weights():
    m = _model_with_running_statistics().train()
    keys = list(m.state_dict())
    folded = m.inference_encoder()
    assert all(module.training for module in m.modules())  # folding is done on a copy
    assert list(m.state_dict()) == keys  # the cached copy is not a submodule
    assert m.inference_encoder() is folded  # nothing changed: the same copy
    with torch.no_grad():
        m.encoder[-2].weight.add_(0.5)  # an optimizer step writes in place like this
    refolded = m.eval().inference_encoder()
    assert refolded is not folded
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(refolded(x), m.encode(x), atol=1e-5, rtol=1e-4)
    m.load_state_dict(_model_with_running_statistics().state_dict())  # a load copies in place too
    assert m.inference_encoder() is not refolded


def test_augment_keeps_shape_and_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    y = augment(x, g, 0.35)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)


def test_checkpoint_describes_itself_and_round_trips(tmp_path, collection):
    path = tmp_path / "m.pt"
    result = train(collection, path, model_args=ModelArgs(width=4, code_dim=16, proj_dim=8),
                   args=TrainArgs(epochs=1, batch_size=16, decoder_epochs=1), progress=False, test=collection)
    model, info = load_checkpoint(path)
    assert info["model_args"] == {"code_dim": 16, "width": 4, "proj_dim": 8, "depth": 1}
    assert info["preprocessing"]["size"] == 32 and info["trained_on"]["items"] == 60
    assert info["losses"]["final_train"]["mse"] > 0 and 0 < info["losses"]["test_mse"] < 1
    assert info["fingerprint"] == result["fingerprint"]
    codes = encode_pixels(model, collection.pixels[:4])
    assert codes.shape == (4, 16) and np.isfinite(codes).all()
    assert reconstruct(model, collection.pixels[:2]).shape == (2, 32, 32, 3)


def test_seeded_training_is_repeatable(tmp_path, collection):
    args = dict(model_args=ModelArgs(width=4, code_dim=16, proj_dim=8),
                args=TrainArgs(epochs=1, batch_size=16, decoder_epochs=0, threads=1), progress=False)
    a = train(collection, tmp_path / "a.pt", **args)
    b = train(collection, tmp_path / "b.pt", **args)
    assert a["final_train"] == b["final_train"]


class Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def test_unsafe_or_foreign_checkpoints_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "imgsearch-autoencoder-v1", "x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(evil)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not an imgsearch"):
        load_checkpoint(other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(pickle.dumps([1, 2]) + b"junk")
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="No checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_weights_that_do_not_match_their_arguments_are_refused(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(ConvAutoEncoder(ModelArgs(width=4, code_dim=16)), path, trained_on={}, losses={}, train_args={})
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_args"]["code_dim"] = 32
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path)
