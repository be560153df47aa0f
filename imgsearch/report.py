"""Where the evaluation and benchmark scripts put what they measured: JSON stamped with its provenance,
and a PNG plot."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The libraries whose kernels and versions move the figures.
VERSIONED = ("torch", "numpy", "faiss-cpu", "annoy", "streamlit", "pymilvus", "imagehash")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str | None:
    """The checkout's commit, with "+dirty" when files differ from it; None outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    """Which code, when, on what machine and with which library versions a figure was measured."""
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(), "versions": versions}


def write_json(path: str | os.PathLike, report: dict) -> None:
    """The report as JSON with a "provenance" key, creating folders as needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**report, "provenance": provenance()}, indent=1) + "\n")


def write_outputs(report: dict, json_path: str | None, plot_path: str | None, plot) -> None:
    """Write the report as JSON and/or draw it with `plot(report, path)`, creating folders as needed."""
    if json_path:
        write_json(json_path, report)
    if plot_path:
        Path(plot_path).parent.mkdir(parents=True, exist_ok=True)
        plot(report, plot_path)


def new_figure():
    """A headless matplotlib figure of the size both reports use."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.5), dpi=110)


def save_figure(fig, ax, path) -> None:
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
