"""Training: reconstruction (de-noising) plus a contrastive invariance term.

Each batch is seen as two randomly augmented views (crop, flip, colour, greyscale). The
decoder rebuilds each clean view from the code of its noisy version (de-noising auto-encoder),
and an InfoNCE term asks the two views' projected codes to match (a strong form of
contractive training: small changes of the input barely move the code).
Augmentation runs on whole batches as tensor ops: per-image PIL transforms would cost
more than the model on two CPU cores.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import Collection
from .model import ConvAutoEncoder, ModelArgs, pixels_to_tensor, save_checkpoint


@dataclass
class TrainArgs:
    epochs: int = 14  # fits the 30-minute CPU budget of the default recipe
    batch_size: int = 256  # InfoNCE sees 2*256-2 negatives per anchor; larger is slower per step on CPU
    lr: float = 2e-3  # AdamW with one-cycle cosine decay
    weight_decay: float = 5e-4
    recon_weight: float = 1.0  # MSE term
    contrastive_weight: float = 0.05  # InfoNCE term, scaled so that neither term drowns the other
    temperature: float = 0.2  # InfoNCE softmax temperature
    noise_std: float = 0.05  # de-noising: Gaussian noise on the encoder's input, pixels in [0, 1]
    crop_scale: float = 0.35  # smallest area fraction of a random crop
    decoder_epochs: int = 3  # then, encoder frozen, the decoder alone learns to rebuild clean images
    seed: int = 0
    threads: int = 0  # torch threads; 0 = torch's default (all cores)


def augment(x: torch.Tensor, g: torch.Generator, crop_scale: float) -> torch.Tensor:
    """Random resized crop + horizontal flip + colour jitter + random greyscale, batched."""
    b = len(x)
    area = torch.empty(b).uniform_(crop_scale, 1.0, generator=g)
    log_ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)
    ratio = log_ratio.exp()
    sx = (area * ratio).sqrt().clamp(max=1.0)  # half-widths in normalised coordinates
    sy = (area / ratio).sqrt().clamp(max=1.0)
    tx = (torch.rand(b, generator=g) * 2 - 1) * (1 - sx)
    ty = (torch.rand(b, generator=g) * 2 - 1) * (1 - sy)
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    jitter = (torch.rand(b, generator=g) < 0.8).float().view(b, 1, 1, 1)
    def factor(strength):
        return 1 + jitter * (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * strength
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = x * factor(0.4)  # brightness
    mean = grey.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * factor(0.4) + mean  # contrast
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - grey) * factor(0.4) + grey  # saturation
    to_grey = (torch.rand(b, 1, 1, 1, generator=g) < 0.2).float()
    x = to_grey * grey.expand_as(x) + (1 - to_grey) * x
    return x.clamp(0, 1)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent: each view must pick its partner out of the other 2B-2 views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    b = len(z1)
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
    return F.cross_entropy(sim, target)


def train(collection: Collection, out_path: str, *, model_args: ModelArgs | None = None,
          args: TrainArgs | None = None, progress: bool = True, test: Collection | None = None) -> dict:
    """Train an auto-encoder on `collection` and save a self-describing checkpoint at `out_path`."""
    args = args or TrainArgs()
    previous_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _train(collection, out_path, model_args or ModelArgs(), args, progress, test)
    finally:
        torch.set_num_threads(previous_threads)


def _train(collection, out_path, model_args: ModelArgs, args: TrainArgs, progress: bool, test) -> dict:
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    # channels_last: ~25% faster convolutions on CPU, same numbers
    model = ConvAutoEncoder(model_args).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(collection) // args.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"The collection has {len(collection)} images, fewer than one batch ({args.batch_size}).")
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=0.1)
    started = time.time()
    history = []
    bar = tqdm(total=args.epochs * steps_per_epoch, desc="training", unit="step", disable=not progress)
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(collection))
        sums = {"loss": 0.0, "mse": 0.0, "nce": 0.0}
        for step in range(steps_per_epoch):
            rows = np.sort(order[step * args.batch_size:(step + 1) * args.batch_size])
            x = pixels_to_tensor(collection.pixels[rows]).contiguous(memory_format=torch.channels_last)
            views = torch.cat([augment(x, g, args.crop_scale), augment(x, g, args.crop_scale)])
            noisy = (views + args.noise_std * torch.randn(views.shape, generator=g)).clamp(0, 1)
            code = model.encode(noisy)
            mse = F.mse_loss(model.decode(code), views)
            loss = args.recon_weight * mse
            nce = torch.zeros(())
            if args.contrastive_weight > 0:
                p = model.project(code)
                nce = info_nce(p[:len(x)], p[len(x):], args.temperature)
                loss = loss + args.contrastive_weight * nce
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in (("loss", loss.detach()), ("mse", mse.detach()), ("nce", nce.detach())):
                sums[k] += v.item()
            bar.update()
            bar.set_postfix(epoch=epoch + 1, mse=f"{mse.item():.4f}", nce=f"{nce.item():.3f}")
        epoch_means = {k: v / steps_per_epoch for k, v in sums.items()}
        history.append(epoch_means)
    bar.close()
    test_mse_joint = reconstruction_mse(model, test.pixels) if test is not None else None
    decoder_mse = _tune_decoder(model, collection, args, g, rng, progress) if args.decoder_epochs else None
    minutes = (time.time() - started) / 60

    losses = {"final_train": history[-1], "decoder_tuning_mse": decoder_mse, "history": history,
              "train_minutes": round(minutes, 2)}
    if test is not None:
        losses["test_mse"] = reconstruction_mse(model, test.pixels)
        losses["test_mse_before_decoder_tuning"] = test_mse_joint
    trained_on = {"collection": collection.spec, "items": len(collection), "classes": collection.classes}
    fp = save_checkpoint(model, out_path, trained_on=trained_on, losses=losses,
                         train_args={**asdict(args), "torch": str(torch.__version__)})
    return {"path": str(out_path), "fingerprint": fp, **losses}


def _tune_decoder(model, collection, args, g, rng, progress) -> float:
    """Fit the decoder to clean (unaugmented, unnoised) images with the codes fixed.

    The joint stage shares the code between two goals; this stage cannot change a single
    code, so retrieval is untouched while reconstruction of real inputs improves.
    """
    model.eval()  # frozen encoder, batch-norm statistics included
    params = list(model.decoder_in.parameters()) + list(model.decoder.parameters())
    model.decoder.train()
    opt = torch.optim.AdamW(params, lr=args.lr / 2)
    steps = args.decoder_epochs * (len(collection) // args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    mean = 0.0
    for step in tqdm(range(steps), desc="tuning decoder", unit="step", disable=not progress):
        rows = np.sort(rng.choice(len(collection), args.batch_size, replace=False))
        x = pixels_to_tensor(collection.pixels[rows]).contiguous(memory_format=torch.channels_last)
        flip = torch.rand(len(x), generator=g) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        with torch.no_grad():
            code = model.encode(x)
        mse = F.mse_loss(model.decode(code), x)
        opt.zero_grad(set_to_none=True)
        mse.backward()
        opt.step()
        sched.step()
        mean = 0.98 * mean + 0.02 * mse.item() if step else mse.item()
    model.eval()
    return mean


@torch.no_grad()
def reconstruction_mse(model: ConvAutoEncoder, pixels: np.ndarray, batch_size: int = 1000) -> float:
    """Mean squared error of encode->decode, pixels in [0, 1]."""
    model.eval()
    total = 0.0
    for s in range(0, len(pixels), batch_size):
        x = pixels_to_tensor(pixels[s:s + batch_size])
        total += float(F.mse_loss(model(x), x, reduction="sum"))
    return total / (len(pixels) * 3 * 32 * 32)


def add_arguments(p) -> "callable":
    """The `imgsearch train` flags (one per TrainArgs/ModelArgs field); returns the runner."""
    import json
    from dataclasses import fields

    from .data import CollectionError, load_collection

    p.add_argument("--data", default="cifar10", help="training collection: cifar10 or a folder (default: cifar10)")
    p.add_argument("--test-data", default=None, help="optional held-out collection: its reconstruction MSE is stored")
    p.add_argument("--out", default="data/model.pt", help="checkpoint path (default: data/model.pt)")
    for f in fields(ModelArgs) + fields(TrainArgs):  # every default lives in one place: the dataclasses
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)

    def run(a) -> int:
        model_args = ModelArgs(**{f.name: getattr(a, f.name) for f in fields(ModelArgs)})
        train_args = TrainArgs(**{f.name: getattr(a, f.name) for f in fields(TrainArgs)})
        try:
            data = load_collection(a.data)
            test = load_collection(a.test_data) if a.test_data else None
        except CollectionError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        result = train(data, a.out, model_args=model_args, args=train_args, test=test)
        summary = {k: result[k] for k in ("path", "fingerprint", "final_train", "train_minutes")}
        if "test_mse" in result:
            summary["test_mse"] = result["test_mse"]
        print(json.dumps(summary, indent=1))
        return 0
    return run
