"""Half precision without NaN: 300 fine-tuning steps under float32, mixed_float16 and mixed_bfloat16.

For convnext_atto (V1, layer scale) and convnextv2_atto (V2, GRN), converted from randomized timm
weights and fine-tuned on scikit-learn's digits (32x32, batch 32, AdamW), on each backend in a
process of its own (Keras fixes its backend at import): every step's loss, and every 25 steps the
weights, the optimizer's variables and a probe batch's gradients, checked for NaN / Inf; the final
loss (mean of the last 50 steps) against the float32 run's, with the same weights and batch order.
A run passes with no non-finite value and |ratio - 1| <= 0.05. The harness is
`tests/half_precision_runs.py`, which the CI test runs for a few steps. Writes
`results/half_precision.json` (through `report.write_json`), after each backend.

    python benchmarks/half_precision.py                       # 300 steps, every backend
    python benchmarks/half_precision.py --backends tensorflow --steps 100
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import report  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")
ARCHS = ("convnext_atto", "convnextv2_atto")
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
MAX_DEVIATION = 0.05

CHILD = r"""
import json, sys, time
import timm, torch  # before TensorFlow: the other order crashes some Linux machines
sys.path.insert(0, sys.argv[1])
from tests import half_precision_runs as runs
steps, last = int(sys.argv[2]), int(sys.argv[3])
x, y = runs.digits()
for arch in sys.argv[4].split(","):
    state_dict = runs.randomized_timm_state_dict(arch)
    for policy in sys.argv[5].split(","):
        start = time.perf_counter()
        run = runs.fine_tune(state_dict, arch, policy, x, y, steps)
        run.update(arch=arch, seconds=time.perf_counter() - start, final_loss=runs.final_loss(run, last),
                   finite=runs.all_finite(run))
        print("RESULT " + json.dumps(run), flush=True)
"""


def run_backend(backend, steps, last, archs, policies):
    """The runs of one backend, each a dict from `half_precision_runs.fine_tune` plus its figures."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-c", CHILD, str(REPO_ROOT), str(steps), str(last), ",".join(archs), ",".join(policies)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    results = [json.loads(line[7:]) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode:
        print(out.stderr[-3000:], file=sys.stderr)
    return results, (None if out.returncode == 0 else f"exit {out.returncode}")


def summarise(backend, results):
    """One row per run: its figures and the ratio of its final loss to the float32 run's."""
    reference = {r["arch"]: r["final_loss"] for r in results if r["policy"] == "float32"}
    rows = []
    for r in results:
        ratio = r["final_loss"] / reference[r["arch"]] if r["arch"] in reference else None
        rows.append(
            {
                "backend": backend,
                "model": r["arch"],
                "policy": r["policy"],
                "steps": len(r["losses"]),
                "final_loss": r["final_loss"],
                "first_loss": r["losses"][0],
                "ratio_to_float32": ratio,
                "finite": r["finite"],
                "loss_scale_optimizer": r["loss_scale_optimizer"],
                "skipped_steps": r["skipped_steps"],
                "final_loss_scale": r["final_loss_scale"],
                "max_abs_gradient": max(c["max_abs_gradient"] for c in r["checks"]),
                "seconds": r["seconds"],
                "passed": bool(r["finite"] and ratio is not None and abs(ratio - 1.0) <= MAX_DEVIATION),
            }
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--last", type=int, default=50, help="steps averaged into the final loss")
    args = parser.parse_args()
    rows, failures = [], {}
    for backend in args.backends.split(","):
        start = time.monotonic()
        results, failure = run_backend(backend, args.steps, args.last, ARCHS, POLICIES)
        rows += summarise(backend, results)
        if failure:
            failures[backend] = failure
        print(f"{backend}: {len(results)} runs in {time.monotonic() - start:.0f} s", flush=True)
        for row in rows:
            if row["backend"] == backend:
                print(json.dumps(row), flush=True)
        path = report.write_json(
            "half_precision",
            {
                "steps": args.steps,
                "final_loss_steps": args.last,
                "batch": 32,
                "image_size": 32,
                "data": "scikit-learn digits (1797 images, 10 classes), bicubic 8x8 -> 32x32, grey -> RGB",
                "optimizer": "AdamW(2e-4, weight_decay=0.05)",
                "max_deviation": MAX_DEVIATION,
                "rows": rows,
                "failures": failures,
            },
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
