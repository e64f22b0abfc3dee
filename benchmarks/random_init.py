"""Creating a model with random weights: Keras' `TruncatedNormal` against `layers.HostTruncatedNormal`.

The models' kernels start from a truncated normal (timm's initialisation). Keras' own initializer
compiles one XLA program per variable shape on JAX; `HostTruncatedNormal` draws the same distribution
with NumPy. Each trial is a fresh process (what a user pays once per process: compiled programs are
kept for the rest of it), timing `create_model(MODEL)` after the imports; the two initializers take
turns, the order flipping every round. Reported: the median seconds of each and their ratio (Keras'
over NumPy's: above 1 means NumPy's buys that much).

    python benchmarks/random_init.py                       # every backend, convnext_atto and convnext_tiny, 3 rounds
    python benchmarks/random_init.py --backends jax --rounds 5
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import report  # noqa: E402

TRIAL = r"""
import json, sys, time
import keras
import convnext_hub.model
from convnext_hub import create_model

if sys.argv[2] == "keras":  # the benchmark patches the product to Keras' initializer
    convnext_hub.model.HostTruncatedNormal = lambda stddev: keras.initializers.TruncatedNormal(stddev=stddev)
start = time.perf_counter()
create_model(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - start}))
"""

SIDES = ("keras", "host")


def trial(backend, model, side):
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [sys.executable, "-c", TRIAL, model, side], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--models", nargs="+", default=["convnext_atto", "convnext_tiny"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    results = {}
    for backend in args.backends:
        for model in args.models:
            seconds = {side: [] for side in SIDES}
            for index in range(args.rounds):
                for side in SIDES if index % 2 == 0 else SIDES[::-1]:
                    seconds[side].append(trial(backend, model, side))
            keras_s, host_s = (statistics.median(seconds[side]) for side in SIDES)
            results.setdefault(backend, {})[model] = {
                "keras_truncated_normal_s": keras_s,
                "host_truncated_normal_s": host_s,
                "ratio": keras_s / host_s,
            }
            print(backend, model, results[backend][model], flush=True)
    path = report.write_json("random_init", {"rounds": args.rounds, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
