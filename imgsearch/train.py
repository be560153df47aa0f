"""Training: reconstruction (optionally de-noising) plus a contrastive invariance term.

Each batch is seen as two randomly augmented views (crop, flip, colour, greyscale). The
decoder rebuilds each view from its code (from the code of a noisy version when noise_std > 0:
a de-noising auto-encoder), and an InfoNCE term asks the two views' projected codes to match (a strong form of
contractive training: small changes of the input barely move the code).
Augmentation runs on whole batches as tensor ops: per-image PIL transforms would cost
more than the model on two CPU cores.

A run saves its whole state (model, optimisers, schedules, random generators, history) after
every epoch next to its output, so `resume=True` continues a killed run from its last
finished epoch and ends where the uninterrupted run would have.
"""
from __future__ import annotations

import io
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import Collection
from .model import ConvAutoEncoder, ModelArgs, pixels_to_tensor, save_checkpoint, write_atomically


@dataclass
class TrainArgs:
    # The defaults are the "default" preset: what a person runs on their own collection, which
    # must stay <= 30 minutes on this 2-core machine for 50,000 images. Its epoch time varies from
    # day to day: 14 + 3 epochs took 22 min at 88 s per epoch, but the 50-epoch run measured a median
    # of 148 s per epoch (2026-11-29), at which 14 epochs take 36 min and 10 take 26 (docs/quality.md).
    epochs: int = 10  # fits the 30-minute budget on the slow days; epochs are the lever that measured best
    batch_size: int = 256  # InfoNCE sees 2*256-2 negatives per anchor; batch 128 measured 38% slower per image on CPU
    lr: float = 2e-3  # one-cycle peak: warm-up, then cosine decay to ~0, so a run of any length ends converged
    weight_decay: float = 5e-4  # mild decoupled (AdamW) decay; version one's value, not re-tuned
    recon_weight: float = 1.0  # the MSE term; the reference the contrastive weight is scaled against
    contrastive_weight: float = 0.05  # InfoNCE; 0.5 measured no better for retrieval and worse for reconstruction
    temperature: float = 0.2  # InfoNCE softmax temperature, within SimCLR's usual 0.1-0.5; not re-tuned
    noise_std: float = 0.0  # input noise (de-noising) measured worse for retrieval, same reconstruction: off
    crop_scale: float = 0.35  # smallest crop area; 0.8 and 0.2 both measured worse for retrieval
    decoder_epochs: int = 3  # then the decoder alone: ~0.001 lower test MSE in every ablation, codes unchanged
    seed: int = 0  # fixed: a rerun gives the same figures, up to multi-threaded float noise
    threads: int = 0  # torch threads; 0 = torch's default (all cores)


# Named recipes: TrainArgs / ModelArgs values that differ from the dataclass defaults.
PRESETS: dict[str, dict] = {
    # The dataclass defaults: <= 30 minutes here, for people's own collections.
    "default": {},
    # The shipped model: the same objective, trained longer, since training length is the lever
    # that measured best (3 -> 14 epochs: P@10 0.44 -> 0.50, about +0.03 per doubling). 50 epochs
    # at the idle machine's 88-166 s per epoch (it varies from day to day) take 75-140 minutes: inside
    # the 3-hour budget, and short enough to finish on a machine that other work shares (90 could not).
    "shipped": {"epochs": 50},
}
_RUN_ONLY = ("threads",)  # how a run is executed, not what it computes: may change on resume


def preset(name: str, **overrides) -> tuple[TrainArgs, ModelArgs]:
    """The named recipe's (TrainArgs, ModelArgs), with `overrides` (field=value) applied."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    values = {**PRESETS[name], **overrides}
    train_names, model_names = {f.name for f in fields(TrainArgs)}, {f.name for f in fields(ModelArgs)}
    unknown = set(values) - train_names - model_names
    if unknown:
        raise ValueError(f"Unknown training argument(s): {', '.join(sorted(unknown))}.")
    return (TrainArgs(**{k: v for k, v in values.items() if k in train_names}),
            ModelArgs(**{k: v for k, v in values.items() if k in model_names}))


def augment(x: torch.Tensor, g: torch.Generator, crop_scale: float) -> torch.Tensor:
    """Random resized crop + horizontal flip + colour jitter + random greyscale, batched.

    The random numbers come from `g` on the CPU whatever device `x` is on, so a run draws the
    same augmentations on a GPU as on a CPU.
    """
    b, dev = len(x), x.device
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
    grid = F.affine_grid(theta.to(dev), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    jitter = (torch.rand(b, generator=g) < 0.8).float().view(b, 1, 1, 1)
    def factor(strength):
        return (1 + jitter * (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * strength).to(dev)
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = x * factor(0.4)  # brightness
    mean = grey.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * factor(0.4) + mean  # contrast
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - grey) * factor(0.4) + grey  # saturation
    to_grey = (torch.rand(b, 1, 1, 1, generator=g) < 0.2).float().to(dev)
    x = to_grey * grey.expand_as(x) + (1 - to_grey) * x
    return x.clamp(0, 1)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent: each view must pick its partner out of the other 2B-2 views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    b = len(z1)
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


def resolve_device(device: str = "auto") -> torch.device:
    """"auto": the GPU when there is one, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available here.")
    return torch.device(device)


def machine(device: torch.device) -> dict:
    """What a training time was measured on."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu or platform.machine(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": str(torch.__version__), "python": platform.python_version(), "platform": platform.platform(),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def state_path(out_path: str | Path) -> Path:
    """Where a run keeps its resume state: beside its output."""
    return Path(str(out_path) + ".state")


def train(collection: Collection, out_path: str, *, model_args: ModelArgs | None = None,
          args: TrainArgs | None = None, progress: bool = True, test: Collection | None = None,
          resume: bool = False, device: str = "auto", preset_name: str | None = None) -> dict:
    """Train an auto-encoder on `collection` and save a self-describing checkpoint at `out_path`.

    The run's state is saved after every epoch at state_path(out_path); resume=True continues
    from it (the arguments must be the ones it was started with).
    """
    args = args or TrainArgs()
    previous_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _train(collection, Path(out_path), model_args or ModelArgs(), args, progress, test, resume,
                      resolve_device(device), preset_name)
    finally:
        torch.set_num_threads(previous_threads)


def _train(collection, out_path: Path, model_args: ModelArgs, args: TrainArgs, progress: bool, test,
           resume: bool, device: torch.device, preset_name) -> dict:
    steps = len(collection) // args.batch_size
    if steps == 0:
        raise ValueError(f"The collection has {len(collection)} images, fewer than one batch ({args.batch_size}).")
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)  # augmentation and noise, on the CPU for every device
    rng = np.random.default_rng(args.seed)  # batch order
    parts = _parts(model_args, args, steps, device)
    run = {"history": [], "seconds": 0.0, "test_mse_before_decoder_tuning": None, "sessions": 1}
    state_file = state_path(out_path)
    what = {"train_args": _recipe(args), "model_args": asdict(model_args), "items": len(collection),
            "collection": collection.spec}
    if resume and state_file.is_file():
        run = _load_state(state_file, what, parts, g, rng)
        run["sessions"] += 1

    total = args.epochs + args.decoder_epochs
    bar = tqdm(total=total * steps, initial=len(run["history"]) * steps, desc="training", unit="step",
               disable=not progress)
    model = parts["model"]
    for epoch in range(len(run["history"]), total):
        started, cpu_started = time.time(), time.process_time()
        if epoch < args.epochs:
            means = _joint_epoch(model, parts["opt"], parts["sched"], collection, args, steps, g, rng, device, bar)
        else:
            means = _decoder_epoch(model, parts["dec_opt"], parts["dec_sched"], collection, args, steps, g, rng,
                                   device, bar)
        if epoch == args.epochs - 1 and test is not None:
            run["test_mse_before_decoder_tuning"] = reconstruction_mse(model, test.pixels)
        means["seconds"] = round(time.time() - started, 1)
        # wall-clock counts time the run waited for shared cores (or was paused); CPU time does not
        means["cpu_seconds"] = round(time.process_time() - cpu_started, 1)
        run["history"].append(means)
        run["seconds"] += means["seconds"]
        _save_state(state_file, what, parts, g, rng, run)
    bar.close()
    return _finish(model, collection, out_path, args, run, test, device, preset_name)


def _parts(model_args: ModelArgs, args: TrainArgs, steps: int, device: torch.device) -> dict:
    """The model, its optimisers and their schedules: everything a resumed run restores."""
    # channels_last: ~25% faster convolutions on CPU, same numbers
    model = ConvAutoEncoder(model_args).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps, pct_start=0.1)
    decoder_params = list(model.decoder_in.parameters()) + list(model.decoder.parameters())
    dec_opt = torch.optim.AdamW(decoder_params, lr=args.lr / 2)
    dec_sched = torch.optim.lr_scheduler.CosineAnnealingLR(dec_opt, max(1, args.decoder_epochs * steps))
    return {"model": model, "opt": opt, "sched": sched, "dec_opt": dec_opt, "dec_sched": dec_sched}


def _finish(model, collection, out_path: Path, args: TrainArgs, run: dict, test, device: torch.device,
            preset_name) -> dict:
    """The trained model as a checkpoint that records its losses, its recipe and the machine it ran on."""
    model.eval()
    joint = [h for h in run["history"] if h["stage"] == "joint"]
    decoder = [h for h in run["history"] if h["stage"] == "decoder"]
    losses = {"final_train": {k: v for k, v in joint[-1].items() if k not in ("stage", "seconds", "cpu_seconds")},
              "decoder_tuning_mse": decoder[-1]["mse"] if decoder else None,
              "history": run["history"], "train_minutes": round(run["seconds"] / 60, 2)}
    if test is not None:
        losses["test_mse"] = reconstruction_mse(model, test.pixels)
        losses["test_mse_before_decoder_tuning"] = run["test_mse_before_decoder_tuning"]
    trained_on = {"collection": collection.spec, "items": len(collection), "classes": collection.classes}
    training = {"seconds": round(run["seconds"], 1), "epoch_seconds": [h["seconds"] for h in run["history"]],
                "epoch_cpu_seconds": [h["cpu_seconds"] for h in run["history"]],
                "sessions": run["sessions"], "preset": preset_name,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    fp = save_checkpoint(model.cpu(), out_path, trained_on=trained_on, losses=losses,
                         train_args={**asdict(args), "torch": str(torch.__version__), "preset": preset_name},
                         extra={"machine": machine(device), "training": training})
    return {"path": str(out_path), "fingerprint": fp, **losses}


def checkpoint_from_state(state_file: str | Path, out_path: str | Path) -> str:
    """A checkpoint of a run's last finished epoch, to evaluate a long run on the way without stopping it."""
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    model = ConvAutoEncoder(ModelArgs(**state["what"]["model_args"]))
    model.load_state_dict(state["model"])
    run = state["run"]
    losses = {"history": run["history"], "train_minutes": round(run["seconds"] / 60, 2), "unfinished": True}
    return save_checkpoint(model.eval(), out_path, losses=losses, train_args=state["what"]["train_args"],
                           trained_on={k: state["what"][k] for k in ("collection", "items")},
                           extra={"training": {"seconds": round(run["seconds"], 1), "epochs_done": len(run["history"])}})


def _batches(collection, args, steps, rng, device):
    order = rng.permutation(len(collection))
    for step in range(steps):
        rows = np.sort(order[step * args.batch_size:(step + 1) * args.batch_size])
        yield pixels_to_tensor(collection.pixels[rows]).to(device).contiguous(memory_format=torch.channels_last)


def _joint_epoch(model, opt, sched, collection, args, steps, g, rng, device, bar) -> dict:
    model.train()
    sums = {"loss": 0.0, "mse": 0.0, "nce": 0.0}
    for x in _batches(collection, args, steps, rng, device):
        views = torch.cat([augment(x, g, args.crop_scale), augment(x, g, args.crop_scale)])
        if args.noise_std:
            views_in = (views + args.noise_std * torch.randn(views.shape, generator=g).to(device)).clamp(0, 1)
        else:
            views_in = views
        code = model.encode(views_in)
        mse = F.mse_loss(model.decode(code), views)
        loss = args.recon_weight * mse
        nce = torch.zeros((), device=device)
        if args.contrastive_weight > 0:
            p = model.project(code)
            nce = info_nce(p[:len(x)], p[len(x):], args.temperature)
            loss = loss + args.contrastive_weight * nce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        for k, v in (("loss", loss), ("mse", mse), ("nce", nce)):
            sums[k] += v.item()
        bar.update()
        bar.set_postfix(mse=f"{mse.item():.4f}", nce=f"{nce.item():.3f}")
    return {"stage": "joint", **{k: v / steps for k, v in sums.items()}}


def _decoder_epoch(model, opt, sched, collection, args, steps, g, rng, device, bar) -> dict:
    """Fit the decoder to clean (unaugmented, unnoised) images with the codes fixed.

    The joint stage shares the code between two goals; this stage cannot change a single
    code, so retrieval is untouched while reconstruction of real inputs improves.
    """
    model.eval()  # frozen encoder, batch-norm statistics included
    model.decoder.train()
    total = 0.0
    for x in _batches(collection, args, steps, rng, device):
        flip = (torch.rand(len(x), generator=g) < 0.5).to(device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        with torch.no_grad():
            code = model.encode(x)
        mse = F.mse_loss(model.decode(code), x)
        opt.zero_grad(set_to_none=True)
        mse.backward()
        opt.step()
        sched.step()
        total += mse.item()
        bar.update()
        bar.set_postfix(mse=f"{mse.item():.4f}")
    return {"stage": "decoder", "mse": total / steps}


def _recipe(args: TrainArgs) -> dict:
    return {k: v for k, v in asdict(args).items() if k not in _RUN_ONLY}


def _save_state(path: Path, what: dict, parts: dict, g, rng, run: dict) -> None:
    state = {"what": what, "run": run, "torch_rng": torch.get_rng_state(), "g": g.get_state(),
             "numpy_rng": rng.bit_generator.state, **{k: v.state_dict() for k, v in parts.items()}}
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomically(path, buf.getvalue())


def _load_state(path: Path, what: dict, parts: dict, g, rng) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["what"] != what:
        differ = sorted(k for k in set(what) | set(state["what"]) if what.get(k) != state["what"].get(k))
        raise ValueError(f"{path} belongs to a run with other {', '.join(differ)}; resume it with its own "
                         f"arguments, or start afresh without --resume.")
    for k, v in parts.items():
        v.load_state_dict(state[k])
    torch.set_rng_state(state["torch_rng"])
    g.set_state(state["g"])
    rng.bit_generator.state = state["numpy_rng"]
    return state["run"]


@torch.no_grad()
def reconstruction_mse(model: ConvAutoEncoder, pixels: np.ndarray, batch_size: int = 1000) -> float:
    """Mean squared error of encode->decode, pixels in [0, 1]."""
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    for s in range(0, len(pixels), batch_size):
        x = pixels_to_tensor(pixels[s:s + batch_size]).to(device)
        total += float(F.mse_loss(model(x), x, reduction="sum"))
    return total / (len(pixels) * 3 * 32 * 32)


def add_arguments(p) -> "callable":
    """The `imgsearch train` flags (one per TrainArgs/ModelArgs field); returns the runner."""
    import json

    from .data import CollectionError, load_collection

    p.add_argument("--data", default="cifar10", help="training collection: cifar10 or a folder (default: cifar10)")
    p.add_argument("--test-data", default=None, help="optional held-out collection: its reconstruction MSE is stored")
    p.add_argument("--out", default="data/model.pt", help="checkpoint path (default: data/model.pt)")
    p.add_argument("--preset", default="default", choices=list(PRESETS),
                   help="named recipe; the flags below override its values (default: default, <= 30 min on 2 cores)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved beside --out (OUT.state) from its last finished epoch, with the "
                        "arguments it was started with (starts afresh when there is no state)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: the GPU when one is present (default: auto)")
    for f in fields(ModelArgs) + fields(TrainArgs):  # every default lives in one place: the dataclasses
        # None = not given, so the preset's value stands
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                       help=f"default: {f.default} (or the preset's)")

    def run(a) -> int:
        given = {f.name: getattr(a, f.name) for f in fields(ModelArgs) + fields(TrainArgs)
                 if getattr(a, f.name) is not None}
        try:
            train_args, model_args = preset(a.preset, **given)
            data = load_collection(a.data)
            test = load_collection(a.test_data) if a.test_data else None
            result = train(data, a.out, model_args=model_args, args=train_args, test=test, resume=a.resume,
                           device=a.device, preset_name=a.preset)
        except (CollectionError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        summary = {k: result[k] for k in ("path", "fingerprint", "final_train", "train_minutes")}
        if "test_mse" in result:
            summary["test_mse"] = result["test_mse"]
        print(json.dumps(summary, indent=1))
        return 0
    return run
