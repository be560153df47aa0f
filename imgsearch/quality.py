"""Where code search and pixel search disagree: the examples the quality view shows.

Each sampled item of a class queries the rest of the index (itself left out); its nearest
neighbour in each space is "right" when it has the query's class.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .search import Index

DEFAULT_EVALUATION = Path(__file__).resolve().parent.parent / "docs" / "evaluation.json"


@dataclass
class Disagreements:
    label: str
    queries: int = 0
    pixel_right: int = 0
    code_right: int = 0
    code_wins: list[tuple[int, int, int]] = field(default_factory=list)  # (query, pixel's top-1, code's top-1)
    pixel_wins: list[tuple[int, int, int]] = field(default_factory=list)
    both_wrong: list[tuple[int, int, int]] = field(default_factory=list)


def disagreements(index: Index, label: str, *, n_queries: int = 100, seed: int = 0, on_progress=None) -> Disagreements:
    """Sample up to n_queries items of `label`; sort them by which space's top-1 got the class right."""
    ids = index.items_of(label)
    rng = np.random.default_rng(seed)
    sample = rng.choice(ids, min(n_queries, len(ids)), replace=False)
    out = Disagreements(label)
    for n, i in enumerate(sample):
        res = index.search(int(i), k=1)
        p, c = res.pixel[0], res.code[0]
        p_ok, c_ok = p.label == label, c.label == label
        out.queries += 1
        out.pixel_right += p_ok
        out.code_right += c_ok
        triple = (int(i), p.id, c.id)
        if c_ok and not p_ok:
            out.code_wins.append(triple)
        elif p_ok and not c_ok:
            out.pixel_wins.append(triple)
        elif not p_ok and not c_ok:
            out.both_wrong.append(triple)
        if on_progress:
            on_progress((n + 1) / len(sample))
    return out


def load_evaluation(path: str | os.PathLike | None = None) -> dict | None:
    """The evaluation script's JSON report (scripts/evaluate.py --json), or None when there is none."""
    path = Path(path or os.environ.get("IMGSEARCH_EVALUATION", DEFAULT_EVALUATION))
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except ValueError:
        return None
    needed = ("pixels", "pca", "codes_exact", "codes_served", "precision_curves", "settings")
    return report if all(k in report for k in needed) else None
