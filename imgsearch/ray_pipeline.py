"""Stage one of a build on a Ray cluster: the same batches as ingest.local_batches, decoded and
encoded by Ray Data instead of one local process pair.

    build_index(..., batches=ray_batches("ray://head:10001"))   # or ray_batches() for a local Ray
    imgsearch build-index --data /shared/images --ray [ADDRESS]

One row of the pipeline is one ingest batch (items b*batch_size ...), so batch boundaries, the
work folder and resuming are exactly the plain build's: ingest() writes each finished batch
as it arrives, whichever pipeline made it. Decoding runs as plain Ray tasks (as many as the
cluster has CPUs); encoding runs in an actor pool, one model copy per actor, on a GPU each
when the cluster has GPUs. On CPUs each actor encodes a batch exactly as `encode_pixels` does
locally, so the codes are the plain build's. Workers read the files by the same paths: on a
cluster the collection must sit on storage every node mounts at the same place.

Ray is imported only here, and this module only when a build asks for it (`pip install -e .[cluster]`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .ingest import batch_rows, decode_files
from .model import ConvAutoEncoder, ModelArgs, encode_pixels, pixels_to_tensor

GPU_BATCH = 1024  # images per forward pass on a GPU, which small batches would leave mostly idle


class RayError(RuntimeError):
    """Ray is missing or the cluster cannot be reached; the message says which, in one sentence."""


def decode_batch(row: dict) -> dict:
    """A pipeline row (batch number and its files, or its pixels) -> the batch decoded."""
    if "pixels" in row:  # an in-memory collection: nothing to decode
        px = np.asarray(row["pixels"], dtype=np.uint8)
        return {"batch": row["batch"], "ok": np.ones(len(px), dtype=bool), "errors": "[]", "pixels": px}
    pixels, ok, errors = decode_files(list(row["paths"]))
    # Only the readable items travel on: the encoder never sees the placeholders of unreadable files.
    return {"batch": row["batch"], "ok": ok, "errors": json.dumps(errors), "pixels": np.ascontiguousarray(pixels[ok])}


class Encoder:
    """One model copy per actor, built once from the driver's weights and used for every batch it is given."""

    def __init__(self, model_args: dict, state_dict: dict):
        import torch

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = ConvAutoEncoder(ModelArgs(**model_args))
        self.model.load_state_dict(state_dict)
        self.model.eval().to(self.device)

    def __call__(self, batch: dict) -> dict:
        out = {"batch": batch["batch"], "ok": batch["ok"], "errors": batch["errors"], "pixels": batch["pixels"],
               "codes": np.empty(len(batch["batch"]), dtype=object)}
        for i, px in enumerate(batch["pixels"]):
            out["codes"][i] = self.encode(np.asarray(px, dtype=np.uint8).reshape(-1, 32, 32, 3))
        return out

    def encode(self, px: np.ndarray) -> np.ndarray:
        if self.device.type == "cpu":
            return encode_pixels(self.model, px)  # the local pipeline's own function
        import torch

        with torch.no_grad():  # the same passes as encode_pixels, with the tensors on the GPU
            return np.concatenate([self.model.encode(pixels_to_tensor(px[s:s + GPU_BATCH]).to(self.device)).cpu()
                                   .numpy() for s in range(0, len(px), GPU_BATCH)]
                                  or [np.empty((0, self.model.args.code_dim), np.float32)])


def connect(address: str | None = None) -> bool:
    """Join the cluster at `address`, or start a local Ray; True when this call started Ray (so it stops it)."""
    try:
        import ray
    except ImportError:
        raise RayError("--ray needs Ray: pip install -e .[cluster] (or -r requirements-cluster.txt).") from None
    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        # The cluster's workers get this checkout of imgsearch; torch, Pillow and numpy must be on their image.
        kwargs["runtime_env"] = {"py_modules": [str(Path(__file__).resolve().parent)]}
    failure = None
    for _ in range(1 if address else 2):  # a local Ray gives its raylet a fixed 30 s: a loaded 2-core machine
        try:                              # can miss that once
            ray.init(address=address, **kwargs)
            return True
        except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, grpc errors: all mean no cluster
            failure = e
            ray.shutdown()
    detail = str(failure).splitlines()[0][:200] if str(failure) else "no detail"
    raise RayError(f"Could not reach a Ray cluster at {address or 'a new local Ray'} "
                   f"({type(failure).__name__}: {detail}).")


def ray_batches(address: str | None = None, *, encoders: int | None = None):
    """A `batches` function for build_index/ingest: the same tuples as ingest.local_batches, made by Ray Data.

    `encoders`: model copies (actors); default one per GPU when the cluster has GPUs, else half its CPUs
    (decoding takes about as long per image as encoding on a CPU).
    """

    def produce(source, model, todo: list[int], batch_size: int):
        if not todo:
            return
        started = connect(address)
        import ray

        try:
            rows = batch_rows(len(source), batch_size)
            if source.pixels is not None:
                items = [{"batch": b, "pixels": np.ascontiguousarray(source.pixels[rows[b].start:rows[b].stop])}
                         for b in todo]
            else:
                items = [{"batch": b, "paths": source.paths[rows[b].start:rows[b].stop]} for b in todo]
            gpus = int(ray.cluster_resources().get("GPU", 0))
            cpus = int(ray.cluster_resources().get("CPU", 1))
            n = encoders or (gpus if gpus else max(1, cpus // 2))
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            ctx = ray.data.DataContext.get_current()
            ctx.execution_options.preserve_order = True  # rows leave in todo's order, as ingest expects
            ctx.enable_progress_bars = False  # ingest draws the one progress bar
            ds = (ray.data.from_items(items, override_num_blocks=len(items))
                  .map(decode_batch)
                  .map_batches(Encoder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(n, len(items))),
                               num_gpus=1 if gpus else 0, num_cpus=1, batch_format="numpy",
                               fn_constructor_kwargs={"model_args": model.args.__dict__, "state_dict": state}))
            for want, row in zip(todo, ds.iter_rows()):
                b = int(row["batch"])
                if b != want:
                    raise RayError(f"Ray returned batch {b} where batch {want} was due.")
                ok = np.asarray(row["ok"], dtype=bool)
                px = np.asarray(row["pixels"], dtype=np.uint8).reshape(-1, 32, 32, 3)
                codes = np.asarray(row["codes"], dtype=np.float32).reshape(len(px), -1)
                yield b, ok, [tuple(e) for e in json.loads(row["errors"])], px, codes
        finally:
            if started:
                ray.shutdown()

    return produce
