"""Peak memory and time of one training step with and without `remat=True`, on every backend (CPU).

Each (backend, remat) pair runs in a fresh process: build the model, compile
it (SGD, cross-entropy), run `train_on_batch` twice (the first compiles), and
report the process's peak RSS (VmHWM, which includes the model and the
framework) and the second step's time. The two settings share everything but
`remat`, so the difference of their peaks is what rematerialisation saves.
Writes `results/remat.json` (through `report.write_json`).

    python benchmarks/remat.py                                  # convnextv2_atto, batch 16, 224 px
    python benchmarks/remat.py --arch convnextv2_base --batch 32  # the issue's setting (needs ~20 GB)
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import report  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")

CHILD = r"""
import json, sys, time
import numpy as np
arch, batch, size, remat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
import keras
import convnext_hub

keras.utils.set_random_seed(0)  # the same weights with and without remat: the losses agree
model = convnext_hub.create_model(arch, num_classes=10, input_shape=(size, size, 3), remat=remat)
model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
x = np.random.RandomState(0).standard_normal((batch, size, size, 3)).astype("float32")
y = np.arange(batch) % 10
model.train_on_batch(x, y)
start = time.perf_counter()
loss = model.train_on_batch(x, y)
seconds = time.perf_counter() - start
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"peak_rss_mib": peak_kib / 1024, "step_seconds": seconds, "loss": float(np.asarray(loss))}))
"""


def measure(backend, arch, batch, size, remat):
    """One fresh process: its peak RSS and the second training step's time."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-c", CHILD, arch, str(batch), str(size), "1" if remat else "0"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="convnextv2_atto")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    args = parser.parse_args()
    rows = []
    for backend in args.backends:
        for remat in (False, True):
            row = {"backend": backend, "remat": remat, **measure(backend, args.arch, args.batch, args.size, remat)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    setting = {"arch": args.arch, "batch": args.batch, "size": args.size, "device": "CPU"}
    print(report.write_json("remat", {"setting": setting, "results": rows}))


if __name__ == "__main__":
    main()
