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
    """Top-1 results of one class's sampled items, in every space, and where two spaces disagree."""
    label: str
    first: str  # the space whose wins are listed first (default: code)
    second: str  # the space it is compared with (default: pixel)
    queries: int = 0
    right: dict[str, int] = field(default_factory=dict)  # space -> queries whose top-1 has the class
    first_wins: list[tuple[int, int, int]] = field(default_factory=list)  # (query, first's top-1, second's top-1)
    second_wins: list[tuple[int, int, int]] = field(default_factory=list)
    both_wrong: list[tuple[int, int, int]] = field(default_factory=list)


def disagreements(index: Index, label: str, *, first: str = "code", second: str = "pixel", n_queries: int = 100,
                  seed: int = 0, on_progress=None) -> Disagreements:
    """Sample up to n_queries items of `label`, search every space; sort them by which of two spaces got it right."""
    ids = index.items_of(label)
    rng = np.random.default_rng(seed)
    sample = rng.choice(ids, min(n_queries, len(ids)), replace=False)
    out = Disagreements(label, first, second, right={name: 0 for name in index.spaces})
    for n, i in enumerate(sample):
        res = index.search(int(i), k=1, spaces=list(index.spaces))
        top = {name: hits[0] for name, hits in res.hits.items()}
        out.queries += 1
        for name, hit in top.items():
            out.right[name] += hit.label == label
        a_ok, b_ok = top[first].label == label, top[second].label == label
        triple = (int(i), top[first].id, top[second].id)
        if a_ok and not b_ok:
            out.first_wins.append(triple)
        elif b_ok and not a_ok:
            out.second_wins.append(triple)
        elif not a_ok and not b_ok:
            out.both_wrong.append(triple)
        if on_progress:
            on_progress((n + 1) / len(sample))
    return out


class ReportError(RuntimeError):
    """An evaluation report exists but cannot be shown; the message says which file and why."""


REPORT_KEYS = ("pixels", "pca", "codes_exact", "codes_served", "precision_curves", "settings")


def load_evaluation(path: str | os.PathLike | None = None) -> dict | None:
    """The evaluation script's JSON report (scripts/evaluate.py --json); None when there is none yet.

    A report that is there but unreadable raises ReportError: "no report yet" would send the
    reader to run an evaluation that already ran, instead of to the damaged file.
    """
    path = Path(path or os.environ.get("IMGSEARCH_EVALUATION", DEFAULT_EVALUATION))
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise ReportError(f"The evaluation report at {path} is unreadable ({type(e).__name__}); "
                          "rerun scripts/evaluate.py --json to replace it.") from None
    missing = [k for k in REPORT_KEYS if k not in report] if isinstance(report, dict) else ["its contents"]
    if missing:
        raise ReportError(f"The evaluation report at {path} is unreadable (it lacks {missing[0]}); "
                          "rerun scripts/evaluate.py --json to replace it.")
    return report
