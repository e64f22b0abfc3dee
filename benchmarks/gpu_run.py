"""Every GPU measurement of issue 15 in one run, inside a time budget, written to one JSON file.

Steps, in order of importance (each gets at most its cap and what is left of
`--budget`; a step that cannot get `MIN_STEP_SECONDS` is skipped and says so):
  1. inference A/B on convnext_tiny (the model whose stage 0 was slow): JAX
     bfloat16, batch 256, timm `torch.compile`d beside it, one jitted forward per
     depthwise formulation, every output checked against the other side's float32;
  2. the same for convnextv2_tiny and convnextv2_base with "xla" and the fastest
     formulation of step 1 that passed its check;
  3. training steps on JAX for convnext_tiny (the fastest formulation first, "xla"
     beside it), then convnextv2_base (the fastest alone) (`benchmarks/train.py`);
  4. the largest training batch of convnextv2_huge, Keras on JAX, then timm;
  5. training steps of Keras on the torch backend.
Results go to `<out>/gpu_run.json` after every step (a run cut short keeps what it
measured); the end prints a compact summary.

On the GPU machine (Keras and two of its dependencies travel as wheels: see
`WHEELS` below for the one-time download):

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \\
    PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_run.py --out $OUT 2>&1 | tee $OUT/gpu_run.log

The machine stays warm for a short while after a call: a second call can run the
steps a first one skipped, e.g. `--only max_batch_torch train_torch --budget 200`
(`--formulations` gives steps 2-3 the formulations the first call chose).

On this CPU, the same steps at tiny sizes, to check the script before a GPU run:

    python benchmarks/gpu_run.py --smoke --out /tmp/gpu_smoke
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import inference
import train
from inference import write_json

# The wheels the GPU image lacks, fetched once into `.whl/` (ignored by git) for Python 3.12:
# pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
#   --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl <each of WHEELS>
WHEELS = ("keras==3.15.1", "namex==0.1.0", "optree==0.20.0")
# Stage 0 has 96 channels in the tiny models and 128 in base: ":128" confines a formulation to it.
FORMULATIONS = ("xla", "pad:128", "nchw:128", "shifted:128")
MIN_STEP_SECONDS = 45
STEPS = (
    "inference_ab",
    "inference_v2",
    "train_jax_tiny",
    "train_jax_base",
    "max_batch_jax",
    "max_batch_torch",
    "train_torch",
)

GPU = dict(
    inference=["--batch", "256", "--size", "224", "--warmup", "2", "--rounds", "2", "--seconds", "0.5"],
    inference_models=(["convnext_tiny"], ["convnextv2_tiny", "convnextv2_base"]),
    train=["--batch", "128", "--size", "224", "--fit-steps", "8", "--warmup", "2", "--rounds", "2", "--seconds", "1"],
    train_models=("convnext_tiny", "convnextv2_base"),
    huge="convnextv2_huge",
    max_batch=["--size", "224", "--search-start", "16", "--search-limit", "4096"],
    caps=dict(
        inference_ab=150,
        inference_v2=130,
        train_jax_tiny=150,
        train_jax_base=130,
        max_batch_jax=150,
        max_batch_torch=100,
        train_torch=100,
    ),
    budget=540,
)
SMOKE = dict(
    inference=["--smoke", "--batch", "2", "--size", "64", "--warmup", "1", "--rounds", "1", "--seconds", "0.05"],
    inference_models=(["convnext_atto"], ["convnextv2_atto"]),
    train=[
        "--smoke",
        "--batch",
        "4",
        "--size",
        "64",
        "--fit-steps",
        "2",
        "--warmup",
        "1",
        "--rounds",
        "1",
        "--seconds",
        "0.05",
    ],
    train_models=("convnext_atto", "convnextv2_atto"),
    huge="convnextv2_atto",
    max_batch=["--smoke", "--size", "32", "--search-start", "2", "--search-limit", "4"],
    caps=dict(
        inference_ab=600,
        inference_v2=600,
        train_jax_tiny=600,
        train_jax_base=600,
        max_batch_jax=300,
        max_batch_torch=300,
        train_torch=600,
    ),
    budget=3600,
)


class Run:
    """The budget, the merged results, and the JSON file they are written to."""

    def __init__(self, out, budget):
        self.out, self.deadline = Path(out), time.monotonic() + budget
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_run_")) / "step"  # each step's own JSON, merged here
        self.results = dict(benchmark="gpu_run", argv=sys.argv[1:], gpu=_nvidia_smi(), steps={})

    def step(self, name, cap, function):
        """Runs `function(seconds, json_path)` if the budget allows; records its JSON or why it has none."""
        seconds = min(cap, self.deadline - time.monotonic())
        if seconds < MIN_STEP_SECONDS:
            self.results["steps"][name] = dict(skipped=f"{seconds:.0f} s of the budget left")
            print(f"== {name}: skipped ({seconds:.0f} s left)", flush=True)
            return None
        print(f"== {name} (up to {seconds:.0f} s)", flush=True)
        path = self.tmp.with_name(f"{name}.json")
        start = time.monotonic()
        try:
            code = function(seconds, path)
            entry = json.loads(path.read_text()) if path.exists() else dict(error="wrote no JSON")
            entry["exit_code"] = code
        except (Exception, SystemExit) as error:  # noqa: BLE001  one broken step must not cost the others
            entry = dict(error=f"{type(error).__name__}: {error}")
        entry["wall_s"] = round(time.monotonic() - start, 1)
        self.results["steps"][name] = entry
        write_json(self.out / "gpu_run.json", self.results)
        path.unlink(missing_ok=True)
        return entry


def _nvidia_smi():
    """The GPU's name, driver and memory as nvidia-smi reports them (None without one)."""
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        return subprocess.run(query, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def fastest_formulation(entry):
    """The formulation of the fastest Keras row whose outputs passed their check ("xla" if none)."""
    rows = [r for r in (entry or {}).get("results", []) if r.get("check") and r["check"]["passed"]]
    return max(rows, key=lambda r: r["keras_img_s"])["depthwise"] if rows else "xla"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_run.json")
    parser.add_argument("--smoke", action="store_true", help="the same steps on the CPU at tiny sizes")
    parser.add_argument("--budget", type=float, help="seconds for all steps (default: 540 on GPU)")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="STEP",
        choices=STEPS,
        help="run these steps alone (a second call finishing a first one's skipped steps)",
    )
    parser.add_argument(
        "--formulations",
        nargs="+",
        metavar="SPEC",
        help="the formulations steps 2-3 use when inference_ab does not run (default: xla)",
    )
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else GPU
    run = Run(args.out, args.budget or plan["budget"])
    caps, wanted = plan["caps"], set(args.only or STEPS)
    common = ["--backends", "jax", "--dtype", "bfloat16", "--gpu", "--timm-compile", "--check"]

    def step(name, function):
        return run.step(name, caps[name], function) if name in wanted else None

    def infer(models, formulations):
        return lambda s, path: inference.main(
            [
                *common,
                *plan["inference"],
                "--models",
                *models,
                "--depthwise",
                *formulations,
                "--timeout",
                str(s),
                "--json",
                str(path),
            ]
        )

    def train_jax(model, formulations):
        return lambda s, path: train.main(
            [
                "--gpu",
                *plan["train"],
                "--backends",
                "jax",
                "--models",
                model,
                "--depthwise",
                *formulations,
                "--timeout",
                str(s),
                "--json",
                str(path),
            ]
        )

    def max_batch(backend, extra):
        return lambda s, path: train.main(
            [
                "--gpu",
                *plan["max_batch"],
                *extra,
                "--backends",
                backend,
                "--max-batch",
                plan["huge"],
                "--search-seconds",
                str(max(s - 40, 10)),
                "--timeout",
                str(s),
                "--json",
                str(path),
            ]
        )

    ab = step("inference_ab", infer(plan["inference_models"][0], FORMULATIONS))
    best = fastest_formulation(ab) if ab else (args.formulations or ["xla"])[0]
    chosen = [best, "xla"] if best != "xla" else ["xla"]
    run.results["chosen_formulations"] = chosen
    step("inference_v2", infer(plan["inference_models"][1], chosen))
    tiny, base = plan["train_models"]
    step("train_jax_tiny", train_jax(tiny, chosen))
    step("train_jax_base", train_jax(base, chosen[:1]))  # the fastest alone: its compile is the cost
    step("max_batch_jax", max_batch("jax", []))
    step("max_batch_torch", max_batch("torch", ["--dynamic"]))
    step(
        "train_torch",
        lambda s, path: train.main(
            [
                "--gpu",
                *plan["train"],
                "--backends",
                "torch",
                "--models",
                tiny,
                base,
                "--timeout",
                str(s / 2),
                "--json",
                str(path),
            ]
        ),
    )

    write_json(run.out / "gpu_run.json", run.results)
    print(summary(run.results))
    return 0


def summary(results):
    """A few lines per step: img/s and ratios, checks, peaks, batch limits, failures."""
    lines = ["", "===== summary ====="]
    for name, entry in results["steps"].items():
        if "skipped" in entry or "error" in entry:
            lines.append(f"{name}: " + (f"skipped ({entry['skipped']})" if "skipped" in entry else entry["error"]))
            continue
        for failure in entry.get("failures", {}).values():
            lines.append(f"{name}: child failed: {failure['error']}")
        for r in entry.get("results", []):
            if "error" in r:
                lines.append(f"{name}: {r.get('label')} failed: {r['error']}")
            elif "keras_img_s" in r:
                check = r["check"] or {}
                err = check.get("keras_low_vs_timm_fp32", {}).get(r["depthwise"])
                lines.append(
                    f"{name}: {r['model']} dw={r['depthwise']}: keras {r['keras_img_s']:.0f} img/s, timm"
                    f" {r['timm_img_s']:.0f}, x{r['ratio']}, check {'PASS' if check.get('passed') else 'FAIL'}"
                    f" ({err if err is None else f'{err:.1e}'})"
                )
            elif "largest_fitting" in r:
                lines.append(
                    f"{name}: {r['model']} {r['side']}: max batch {r['largest_fitting']}"
                    f" (fails at {r['smallest_failing']}, converged {r['converged']})"
                )
            else:
                lines.append(f"{name}: " + train._summary([r]).replace("\n", f"\n{name}: "))
    lines.append(f"chosen formulations: {results.get('chosen_formulations')}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
