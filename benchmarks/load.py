"""New process -> first logits: `load_pretrained` against timm's `create_model(pretrained=True)`, every backend.

Random-weight checkpoints are served by the fake Hub of `tests/hub_server.py`,
started here, as `timm/<tag>` repos with `model.safetensors` (no Hub access).
timm's first run downloads the file into huggingface_hub's cache; then, side by
side, for each Keras backend (each with its own convnext_hub cache):

- first load: `load_pretrained` converts from that warm huggingface_hub cache
  into ours (the streaming conversion), against timm's create from the same
  cache; with the load's peak RSS above the process's RSS after its imports;
  `--runs` times, into an emptied cache each time;
- cached load: fresh interpreters timed from spawn to the first logits of one
  224x224 image (`model(x)`), with their phases (imports, create + load, first
  forward). On JAX the first load's process compiled the forward (cold
  compilation cache); the cached runs find it in the cache.

Figures are medians of `--runs`; `results/load.json` and `results/load.png`
hold them (`--results` names others). `--ours-python` runs our sides in another
interpreter, e.g. of an install with TensorFlow but not JAX or matplotlib, which
TensorFlow and Keras import whenever they are installed.

    python benchmarks/load.py --quick                                   # convnext_tiny, one run
    python benchmarks/load.py --models convnext_tiny convnextv2_huge    # the 2.6 GB one too (minutes)
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.random_weights import write_random_safetensors  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")

# Peaks come from /proc/self/status: a child's `ru_maxrss` starts at its parent's peak (Linux keeps the
# figure across exec), which hid loads smaller than this benchmark process.
MEASURE = """
import json, sys, time

def status_mb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024

def imports_done():
    \"\"\"`(time, RSS, peak so far)`; then the peak restarts from the RSS (Linux 4.0+)
    so that it covers the load.\"\"\"
    done, rss, peak = time.time(), status_mb("VmRSS"), status_mb("VmHWM")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return done, rss, peak

def report(imported, base, import_peak, loaded, load_peak, logits):
    done = time.time()
    print("RESULT " + json.dumps({
        "imported": imported, "loaded": loaded, "done": done, "base_rss_mb": base, "load_peak_mb": load_peak,
        "peak_rss_mb": max(import_peak, status_mb("VmHWM")), "finite": bool(np.isfinite(logits).all()),
        "shape": list(logits.shape),
        "torch_imported": "torch" in sys.modules, "tensorflow_imported": "tensorflow" in sys.modules}))
"""

OURS = (
    MEASURE
    + """
import keras
import numpy as np
from convnext_hub.hub import load_pretrained
imported, base, import_peak = imports_done()
model = load_pretrained(sys.argv[1])
loaded, load_peak = time.time(), status_mb("VmHWM")
report(imported, base, import_peak, loaded, load_peak,
       keras.ops.convert_to_numpy(model(np.zeros((1, 224, 224, 3), np.float32))))
"""
)

TIMM = (
    MEASURE
    + """
import numpy as np
import torch, timm
imported, base, import_peak = imports_done()
model = timm.create_model(sys.argv[1], pretrained=True).eval()
loaded, load_peak = time.time(), status_mb("VmHWM")
with torch.no_grad():
    report(imported, base, import_peak, loaded, load_peak, model(torch.zeros(1, 3, 224, 224)).numpy())
"""
)


def run_child(code, name, env, python=sys.executable):
    """A fresh interpreter running `code`: seconds from spawn to each phase, and its memory figures."""
    os.sync()  # the disk has written back earlier children's files, which would otherwise slow this one's writes
    start = time.time()
    out = subprocess.run([python, "-c", code, name], env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"child for {name} failed:\n{out.stderr[-3000:]}")
    r = json.loads(lines[-1][len("RESULT ") :])
    assert r["finite"], f"{name}: non-finite logits"
    return {
        "total": r["done"] - start,
        "import": r["imported"] - start,
        "load": r["loaded"] - r["imported"],
        "forward": r["done"] - r["loaded"],
        "load_peak_above_base_mb": r["load_peak_mb"] - r["base_rss_mb"],
        "peak_rss_mb": r["peak_rss_mb"],
        "torch_imported": r["torch_imported"],
        "tensorflow_imported": r["tensorflow_imported"],
    }


def median_run(runs):
    """Medians of the numbers; flags true if any run had them."""
    return {
        k: any(r[k] for r in runs) if isinstance(runs[0][k], bool) else statistics.median(r[k] for r in runs)
        for k in runs[0]
    }


def measure(name, hub, workdir, backends, runs, python):
    """Every figure of one checkpoint: timm's, then each backend's, side by side."""
    import checkpoints

    entry = checkpoints.resolve(name)
    source = write_random_safetensors(entry["architecture"], workdir / "source.safetensors", entry["num_classes"])
    size_mb = source.stat().st_size / 1e6
    hub.add_commit(entry["hf_hub_id"], {"model.safetensors": source, "config.json": "{}"})
    source.unlink()
    base_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    envs = {
        b: {**base_env, "KERAS_BACKEND": b, "CONVNEXT_HUB_CACHE": str(workdir / "convnext_hub" / b)} for b in backends
    }
    timm_download = run_child(TIMM, entry["name"], base_env)  # fills huggingface_hub's cache
    first = first_loads(name, envs, runs, python)  # converts from that cache into ours
    timed = {side: [] for side in ("timm", *backends)}
    for run in range(runs):  # alternate, so drift hits every side
        timed["timm"].append(run_child(TIMM, entry["name"], base_env))
        for b in rotated(backends, run):
            timed[b].append(run_child(OURS, name, envs[b], python))
    medians = {side: median_run(r) for side, r in timed.items()}
    timm = medians["timm"]
    row = {
        "name": entry["name"],
        "checkpoint_mb": size_mb,
        "timm": timm,
        "timm_download": timm_download,
        "backends": {},
    }
    for b in backends:
        ours, conv = medians[b], first[b]
        row["backends"][b] = {
            "cached": ours,
            "first_load": conv,
            "ratios": {
                "cached_load_forward": (ours["load"] + ours["forward"]) / (timm["load"] + timm["forward"]),
                "total": ours["total"] / timm["total"],
                "first_load": conv["load"] / timm["load"],
                "first_load_peak_over_checkpoint": conv["load_peak_above_base_mb"] / size_mb,
            },
        }
    shutil.rmtree(workdir / "convnext_hub", ignore_errors=True)  # disk: the big files exist 3 times
    shutil.rmtree(Path(os.environ["HF_HUB_CACHE"]), ignore_errors=True)
    return row


def rotated(sides, run):
    """`sides` starting at a different one each run: on this VM the process after one that freed gigabytes
    (timm's) pays for faulting fresh memory back in, so no side should always come first."""
    start = run % len(sides)
    return [*sides[start:], *sides[:start]]


def first_loads(name, envs, runs, python):
    """Per backend, medians of `runs` first loads (backends alternating), each converting into an emptied
    cache; JAX's compilation cache is kept after the first, so `forward` is the first run's (compiled
    from nothing)."""
    loads = {backend: [] for backend in envs}
    for run in range(runs):
        for backend in rotated(list(envs), run):
            env = envs[backend]
            for path in Path(env["CONVNEXT_HUB_CACHE"]).glob("*"):
                if path.name != "jax":
                    shutil.rmtree(path)
            loads[backend].append(run_child(OURS, name, env, python))
    return {backend: {**median_run(runs_), "forward": runs_[0]["forward"]} for backend, runs_ in loads.items()}


def print_rows(rows, runs):
    print(
        f"\nnew process -> first logits (1x224x224), median of {runs}; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'checkpoint':34} {'side':11} {'total s':>8} {'import':>7} {'load':>7} {'forward':>8} {'peak MB':>8}")
    for row in rows:
        for side, r in [("timm", row["timm"])] + [(b, v["cached"]) for b, v in row["backends"].items()]:
            print(
                f"{row['name']:34} {side:11} {r['total']:8.2f} {r['import']:7.2f} {r['load']:7.2f} "
                f"{r['forward']:8.2f} {r['peak_rss_mb']:8.0f}"
            )
        for b, v in row["backends"].items():
            q, first = v["ratios"], v["first_load"]
            print(
                f"  {b:10} cached load+forward {q['cached_load_forward']:.2f}x timm, whole process "
                f"{q['total']:.2f}x; first load (convert from HF cache) {first['load']:.2f} s = "
                f"{q['first_load']:.2f}x timm's create, peak +{first['load_peak_above_base_mb']:.0f} MB = "
                f"{q['first_load_peak_over_checkpoint']:.2f}x the {row['checkpoint_mb']:.0f} MB checkpoint; "
                f"first forward in that process {first['forward']:.2f} s, later {v['cached']['forward']:.2f} s; "
                f"torch imported: {v['cached']['torch_imported']}"
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["convnext_tiny", "convnextv2_huge"], help="registry names")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--quick", action="store_true", help="convnext_tiny, one run: checks the benchmark works")
    parser.add_argument("--workdir", help="where the fake Hub and the caches live (default: a temp dir)")
    parser.add_argument(
        "--ours-python",
        default=sys.executable,
        help="interpreter of our sides, e.g. one of an install with only TensorFlow (default: this one)",
    )
    parser.add_argument("--results", default="load", help="name of the results' .json and .png")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.runs = ["convnext_tiny"], 1

    import pytest

    from tests.hub_server import LocalHub, configure_hub_env

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="convnext_hub-bench-"))
    mp = pytest.MonkeyPatch()
    try:
        with LocalHub(workdir / "hub_store") as hub:
            configure_hub_env(mp, hub.endpoint, workdir / "hf_home" / "hub")
            rows = [measure(name, hub, workdir, args.backends, args.runs, args.ours_python) for name in args.models]
    finally:
        mp.undo()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print_rows(rows, args.runs)
    payload = {"runs": args.runs, "quick": args.quick, "ours_python": args.ours_python, "rows": rows}
    print(f"wrote {report.write_json(args.results, payload)}")
    groups = {
        f"{row['name'].split('.')[0]}\n{what}": {b: v["ratios"][key] for b, v in row["backends"].items()}
        for row in rows
        for what, key in (
            ("cached load+forward", "cached_load_forward"),
            ("whole process", "total"),
            ("first load", "first_load"),
            ("first-load\npeak / file", "first_load_peak_over_checkpoint"),
        )
    }
    chart = report.bar_chart(
        args.results, "convnext_hub / timm (lower is better; dashed: parity)", groups, "ratio", 1.0
    )
    if chart:
        print(f"wrote {chart}")


if __name__ == "__main__":
    main()
