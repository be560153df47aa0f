"""The convolutional auto-encoder: 32x32x3 image -> 256-d code -> 32x32x3 image.

Encoder: conv + batch-norm + ReLU blocks, max-pooling to halve the resolution 32 -> 16 -> 8 -> 4,
then a linear layer to the code. Decoder: a linear layer back to 4x4 feature maps, then
transposed convolutions ("deconvolution") doubling the resolution 4 -> 8 -> 16 -> 32.
The code is the only path from encoder to decoder: no skip connections.
"""
from __future__ import annotations

import copy
import hashlib
import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

from .images import PREPROCESSING

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "models" / "cifar10-ae.pt"  # the shipped model

# Images per forward pass when encoding. The first block's feature maps take 128 KB an image, so a
# batch of 1,024 streams 128 MB through memory at each layer; 64 keep them near the cores. 1.4-1.9x
# faster on this machine's CPU, with oneDNN on AVX-512 and held to AVX2 alike (docs/speed.md).
ENCODE_BATCH = 64


@dataclass
class ModelArgs:
    code_dim: int = 256  # Krizhevsky & Hinton's code length for 32x32 images
    width: int = 32  # channels of the first block; each pooling doubles them (32-64-128-256)
    proj_dim: int = 128  # the contrastive head's output; training only, never part of the code
    depth: int = 1  # conv blocks at each of the two smallest resolutions (8x8, 4x4); extra ones are cheap there


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ConvAutoEncoder(nn.Module):
    def __init__(self, args: ModelArgs | None = None, **kwargs):
        super().__init__()
        self.args = args or ModelArgs(**kwargs)
        w, d = self.args.width, self.args.code_dim
        # depth 1 keeps the module indices of the first checkpoints, so they still load
        extra = self.args.depth - 1
        self.encoder = nn.Sequential(
            _block(3, w), nn.MaxPool2d(2),  # (B, w, 16, 16)
            _block(w, 2 * w), nn.MaxPool2d(2),  # (B, 2w, 8, 8)
            _block(2 * w, 4 * w), *[_block(4 * w, 4 * w) for _ in range(extra)], nn.MaxPool2d(2),  # (B, 4w, 4, 4)
            _block(4 * w, 8 * w), *[_block(8 * w, 8 * w) for _ in range(extra)],  # (B, 8w, 4, 4)
            nn.Flatten(),
            nn.Linear(8 * w * 16, d),
            # Centres and scales every code dimension, so angular distance compares
            # directions around the collection's mean instead of all codes pointing one way.
            nn.BatchNorm1d(d, affine=False),
        )
        self.decoder_in = nn.Sequential(nn.Linear(d, 4 * w * 16), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),  # 8x8
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True),  # 16x16
            nn.ConvTranspose2d(w, 3, 4, stride=2, padding=1),  # 32x32; no conv at full size: it would cost
            nn.Sigmoid(),  # pixels in [0, 1]                    more than the rest of the decoder
        )
        # Contrastive projection head (SimCLR): invariance is asked of its output, so the
        # code itself can stay informative enough for the decoder to rebuild the image.
        self.projector = nn.Sequential(nn.Linear(d, 512), nn.ReLU(inplace=True), nn.Linear(512, self.args.proj_dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) in [0, 1] -> (B, code_dim)."""
        return self.encoder(x)

    def inference_encoder(self) -> nn.Sequential:
        """The encoder as eval mode computes it, with each batch-norm folded into the layer before it.

        The same function to float rounding (~1e-5), and ~30% faster on a CPU: a batch-norm in eval
        mode is one more pass over every feature map (docs/speed.md). Folded again whenever a weight
        or a running statistic has changed since (an optimizer step, a load, a move to a device)."""
        state = tuple((t.data_ptr(), t._version) for t in [*self.encoder.parameters(), *self.encoder.buffers()])
        cached = self.__dict__.get("_folded")  # a plain attribute, not a submodule: never in the state dict
        if cached is None or cached[0] != state:
            cached = self.__dict__["_folded"] = (state, fold_batchnorms(self.encoder))
        return cached[1]

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """(B, code_dim) -> (B, 3, 32, 32) in [0, 1]."""
        h = self.decoder_in(code).view(len(code), 4 * self.args.width, 4, 4)
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def project(self, code: torch.Tensor) -> torch.Tensor:
        return self.projector(code)


def fold_batchnorms(module: nn.Sequential) -> nn.Sequential:
    """A copy of `module` (nested Sequentials flattened) with every batch-norm that follows a conv or a
    linear layer folded into that layer's weights and bias, using the batch-norm's running statistics.
    In eval mode; `module` itself is left as it was."""
    layers: list[nn.Module] = []
    for m in copy.deepcopy(module).eval().modules():
        if isinstance(m, nn.BatchNorm2d) and layers and isinstance(layers[-1], nn.Conv2d):
            layers[-1] = fuse_conv_bn_eval(layers[-1], m)
        elif isinstance(m, nn.BatchNorm1d) and layers and isinstance(layers[-1], nn.Linear):
            layers[-1] = _fold_linear_batchnorm(layers[-1], m)
        elif not isinstance(m, nn.Sequential):  # Sequentials are walked by modules(), in order
            if any(True for _ in m.children()):
                raise ValueError(f"cannot fold a {type(m).__name__}: only Sequentials of plain layers")
            layers.append(m)
    return nn.Sequential(*layers).eval()


@torch.no_grad()
def _fold_linear_batchnorm(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    # torch's fuse_linear_bn_eval needs an affine batch-norm; the code's own has none (affine=False)
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    folded = nn.Linear(linear.in_features, linear.out_features, device=linear.weight.device)
    folded.weight.copy_(linear.weight * scale[:, None])
    bias = linear.bias if linear.bias is not None else torch.zeros_like(scale)
    folded.bias.copy_(bias * scale + shift)
    return folded


def pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(B, 32, 32, 3) uint8 -> (B, 3, 32, 32) float in [0, 1]."""
    # torch.tensor copies: the pixels may be a read-only memory map (an index's store), which from_numpy refuses
    return torch.tensor(np.asarray(pixels, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255.0)


def tensor_to_pixels(x: torch.Tensor) -> np.ndarray:
    """(B, 3, 32, 32) in [0, 1] -> (B, 32, 32, 3) uint8."""
    return x.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def encode_pixels(model: ConvAutoEncoder, pixels: np.ndarray, *, batch_size: int = ENCODE_BATCH,
                  progress: bool = False) -> np.ndarray:
    """(N, 32, 32, 3) uint8 -> (N, code_dim) float32 codes, in batches."""
    model.eval()
    encoder = model.inference_encoder()
    out = np.empty((len(pixels), model.args.code_dim), dtype=np.float32)
    for start in tqdm(range(0, len(pixels), batch_size), desc="encoding", unit="batch",
                      disable=not progress, mininterval=0.5):
        batch = pixels_to_tensor(pixels[start:start + batch_size])
        out[start:start + len(batch)] = encoder(batch).numpy()
    return out


@torch.no_grad()
def reconstruct(model: ConvAutoEncoder, pixels: np.ndarray) -> np.ndarray:
    """Encode then decode: what the code keeps of each image, as uint8 pixels."""
    model.eval()
    return tensor_to_pixels(model(pixels_to_tensor(pixels)))


@torch.no_grad()
def decode_codes(model: ConvAutoEncoder, codes: np.ndarray) -> np.ndarray:
    """(N, code_dim) codes -> (N, 32, 32, 3) uint8: the decoder's image of each code, from an item or not."""
    model.eval()
    return tensor_to_pixels(model.decode(torch.tensor(np.asarray(codes, dtype=np.float32))))


# ---- checkpoints ---------------------------------------------------------------------------

class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why."""


TRAINING_ONLY = ("projector.",)  # state_dict prefixes serving never uses: not shipped


def save_checkpoint(model: ConvAutoEncoder, path: str | Path, *, trained_on: dict, losses: dict,
                    train_args: dict, extra: dict | None = None) -> str:
    """Write a self-describing checkpoint (encoder, decoder, arguments, figures); returns its fingerprint.

    `extra` adds top-level entries (the machine, the training time); load_checkpoint's info carries them.
    """
    ckpt = {
        **(extra or {}),
        "format": "imgsearch-autoencoder-v1",
        "model_args": asdict(model.args),
        "preprocessing": PREPROCESSING,
        "trained_on": trained_on,
        "train_args": train_args,
        "losses": losses,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith(TRAINING_ONLY)},
    }
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    write_atomically(path, buf.getvalue())
    return fingerprint(path)


def write_atomically(path: str | Path, data: bytes) -> None:
    """A reader (or a run killed mid-write) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def fingerprint(path: str | Path) -> str:
    """sha256 of the checkpoint file: which exact model made a set of codes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def load_checkpoint(path: str | Path) -> tuple[ConvAutoEncoder, dict]:
    """Load safely (weights_only: a checkpoint is user input); returns (model in eval mode, info)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}; train one with scripts/train.py.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable imgsearch checkpoint ({type(e).__name__}).") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "imgsearch-autoencoder-v1":
        raise CheckpointError(f"{path} is not an imgsearch auto-encoder checkpoint.")
    if ckpt.get("preprocessing", {}).get("size") != PREPROCESSING["size"]:
        raise CheckpointError(f"{path} expects {ckpt['preprocessing'].get('size')}px inputs, this code makes "
                              f"{PREPROCESSING['size']}px.")
    try:
        model = ConvAutoEncoder(ModelArgs(**ckpt["model_args"]))
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
        # the projection head is left out of shipped checkpoints (older ones still carry it)
        missing = [k for k in missing if not k.startswith(TRAINING_ONLY)]
        if missing or unexpected:
            raise KeyError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    except (TypeError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path} does not match the model its arguments describe ({_first_line(e)}).") from None
    model.eval()
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    info["fingerprint"] = fingerprint(path)
    info["path"] = str(path)
    return model, info


def _first_line(e: Exception) -> str:
    return str(e).strip().split("\n")[0][:200]
