"""Where the benchmarks put their figures: `benchmarks/results/<name>.json` and a bar chart `<name>.png`."""

import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine():
    """What the figures were measured on (load average included: a busy machine inflates them)."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


VERSIONED = ("keras", "tensorflow", "jax", "torch", "timm", "numpy", "onnxruntime", "openvino", "keras-hub")


def versions():
    """The installed versions of the packages the figures depend on (those that are installed)."""
    from importlib import metadata

    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def write_json(name, payload):
    """`payload` with the machine's description, the package versions and the command that ran, as
    `results/<name>.json` (what the benchmark page renders); the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {"machine": machine(), "versions": versions(), "command": ["python", *sys.argv], **payload}
    path.write_text(json.dumps(record, indent=2, default=float))
    return path


def bar_chart(name, title, groups, ylabel, reference=None):
    """Grouped bars: `groups` is `{group label: {series label: value}}`; a dashed line at `reference`.

    Written as `results/<name>.png`; returns the path (None without matplotlib).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    series = list(dict.fromkeys(s for values in groups.values() for s in values))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(min(14, max(6, 2 + 0.35 * len(groups) * len(series))), 4.5))
    for i, label in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ys = [values.get(label, 0.0) for values in groups.values()]
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
