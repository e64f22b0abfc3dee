"""The conversion CLI on a big checkpoint, against timm loading the same file, on every configured backend.

Makes a random `convnextv2_huge` checkpoint (2.6 GB; written one tensor at a
time) once, then measures fresh processes from spawn to exit (imports
included), with their peak RSS:
  - ours, with `KERAS_BACKEND` set to each backend: the command a user runs,
    `python -m converters.timm_to_keras FILE --out DIR` (tensors streamed from
    the file into the `.weights.h5`; the command picks the backend that imports
    fastest, since the file is the same on every backend);
  - timm: `timm.create_model(arch, pretrained=True)` from the same file.
Best of `--repeats`, alternated so drift hits every side; `results/convert.json`
and `results/convert.png` hold the figures.

    python benchmarks/convert.py --quick           # convnext_tiny, one repeat
    python benchmarks/convert.py [--arch convnextv2_huge] [--dir /tmp/convnext_bench] [--backends jax]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.random_weights import write_random_safetensors  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")

# Runs a command in this interpreter (runpy), then reports its peak RSS (VmHWM: a child's `ru_maxrss` starts
# at its parent's peak, which Linux keeps across exec); the parent times spawn to exit.
CHILD = r"""
import json, runpy, sys
mode, arch, path, out = sys.argv[1:5]
if mode == "timm":
    import timm
    timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=path))
else:
    sys.argv = ["timm_to_keras", path, "--out", out]
    try:
        runpy.run_module("converters.timm_to_keras", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code:
            raise
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
print("RESULT " + json.dumps({"peak_rss": peak,
                              "backend": sys.modules["keras"].backend.backend() if "keras" in sys.modules else None}))
"""


def run(mode, arch, path, out, backend):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=backend, PYTHONPATH=str(REPO_ROOT))
    os.sync()  # the disk has written back earlier runs' files, which would otherwise slow this one's writes
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, arch, path, out], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, **json.loads(lines[-1][len("RESULT ") :])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="convnextv2_huge")
    parser.add_argument("--dir", default="/tmp/convnext_bench")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--quick", action="store_true", help="convnext_tiny, one repeat: checks the benchmark works")
    args = parser.parse_args(argv)
    if args.quick:
        args.arch, args.repeats = "convnext_tiny", 1
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, f"{args.arch}.safetensors")
    if not os.path.exists(path):
        t = time.perf_counter()
        write_random_safetensors(args.arch, path)
        print(f"made {path} in {time.perf_counter() - t:.0f} s")
    size = os.path.getsize(path)
    out = os.path.join(args.dir, f"{args.arch}-converted")
    sides = [("timm", "timm", "tensorflow")] + [(f"ours, KERAS_BACKEND={b}", "ours", b) for b in args.backends]
    runs = {label: [] for label, _, _ in sides}
    for repeat in range(args.repeats):  # alternate, so drift hits every side; ours in turn right after timm,
        start = repeat % (len(sides) - 1) + 1  # which on this VM slows the next process (fresh memory)
        for label, mode, backend in [sides[0], *sides[start:], *sides[1:start]]:
            runs[label].append(run(mode, args.arch, path, out, backend))
    best = {label: min(rs, key=lambda r: r["seconds"]) for label, rs in runs.items()}
    timm = best["timm"]["seconds"]
    print(
        f"{args.arch}: checkpoint {size / 1e9:.2f} GB; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; best of {args.repeats}, spawn to exit"
    )
    for label, r in best.items():
        used = f" (ran on {r['backend']})" if r.get("backend") and label != "timm" else ""
        print(
            f"  {label:<28} {r['seconds']:6.1f} s  ({r['seconds'] / timm:.2f}x timm)"
            f"   peak RSS {r['peak_rss'] / 1e9:5.2f} GB = {r['peak_rss'] / size:.2f}x file{used}"
        )
    payload = {
        "arch": args.arch,
        "checkpoint_bytes": size,
        "repeats": args.repeats,
        "quick": args.quick,
        "best": best,
        "runs": runs,
        "ratios": {label: r["seconds"] / timm for label, r in best.items()},
    }
    print(f"wrote {report.write_json('convert', payload)}")
    chart = report.bar_chart(
        "convert",
        f"{args.arch}: conversion CLI / timm create+load (lower is better; dashed: parity)",
        {
            label.replace(", ", "\n"): {"time": r["seconds"] / timm, "peak RSS / file": r["peak_rss"] / size}
            for label, r in best.items()
        },
        "ratio",
        1.0,
    )
    if chart:
        print(f"wrote {chart}")


if __name__ == "__main__":
    main()
