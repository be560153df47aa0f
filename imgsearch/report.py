"""Where the evaluation and benchmark scripts put what they measured: JSON and a PNG plot."""
from __future__ import annotations

import json
from pathlib import Path


def write_outputs(report: dict, json_path: str | None, plot_path: str | None, plot) -> None:
    """Write the report as JSON and/or draw it with `plot(report, path)`, creating folders as needed."""
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=1))
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
