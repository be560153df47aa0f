"""Train the auto-encoder: python scripts/train.py [--data FOLDER|cifar10] [--epochs N] [--out CKPT]"""
import argparse
import json
import sys
from dataclasses import fields

import _path  # noqa: F401
from imgsearch.data import CollectionError, load_collection
from imgsearch.model import ModelArgs
from imgsearch.train import TrainArgs, train


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="cifar10", help="training collection: cifar10 or a folder (default: cifar10)")
    p.add_argument("--test-data", default=None, help="optional held-out collection: its reconstruction MSE is stored")
    p.add_argument("--out", default="data/model.pt", help="checkpoint path (default: data/model.pt)")
    for f in fields(ModelArgs) + fields(TrainArgs):  # every default lives in one place: the dataclasses
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    a = p.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
