"""Runs the whole suite on TensorFlow, then the backend-dependent tests on JAX and torch.

    python -m tests            # everything, as CI does
    python -m tests -x -k atto # extra arguments go to every pytest run

Keras fixes its backend at import, so each backend gets its own pytest processes. On TensorFlow
every test module runs in a process of its own, and the export and keras-hub tests do on JAX and
torch too: what TensorFlow keeps of the models a module builds added up to more than the 24 GB of
the test machine when the whole suite shared one process.
"""

import glob
import os
import subprocess
import sys
import time

# Modules whose results depend on the Keras backend; the rest run once, on TensorFlow.
BACKEND_MODULES = [
    "tests/test_layers.py",
    "tests/test_models.py",
    "tests/test_fast_path.py",
    "tests/test_training.py",
    "tests/test_equivalence.py",
    "tests/test_preprocessing.py",
    "tests/test_finetune.py",
    "tests/test_finetune_folder.py",  # the digits accuracy and resume equality differ by backend
    "tests/test_depthwise_formulations.py",
    "tests/test_keras_hub.py",
    "tests/test_export.py",
    "tests/test_cache_integrity.py",  # every backend keeps the entry's mapped pages as its weights
    "tests/test_hub.py",  # first and cached loads differ by backend in what a model keeps
    "tests/test_timm_features.py",  # forward_intermediates, output_stride, channels_first, remat against timm
    "tests/test_keras_hub_harness.py",  # keras-hub's own TestCase checks, channels_first on JAX and torch
]


# Modules that get a pytest process of their own (per backend).
ISOLATED_MODULES = ["tests/test_export.py", "tests/test_keras_hub.py"]

# On TensorFlow, modules that build few or no models share one process: each process pays about
# 9 s of CPU to import torch, timm and TensorFlow, and these keep little memory.
SHARED_ON_TENSORFLOW = [
    "tests/test_arguments.py",
    "tests/test_checkpoints.py",
    "tests/test_depthwise_formulations.py",
    "tests/test_fast_path.py",
    "tests/test_faults_concurrent.py",
    "tests/test_faults_disk.py",
    "tests/test_faults_sigkill.py",
    "tests/test_faults_version.py",
    "tests/test_hub_server.py",
    "tests/test_import_layers.py",
    "tests/test_keras_compat.py",
    "tests/test_layouts.py",
    "tests/test_lint.py",
    "tests/test_readers.py",
    "tests/test_source_integrity.py",
    "tests/test_surface.py",
]


def main(extra):
    rest = [m for m in BACKEND_MODULES if m not in ISOLATED_MODULES]
    not_independent = ["-m", "not backend_independent"]
    here = os.path.dirname(os.path.abspath(__file__))
    modules = sorted(os.path.relpath(m) for m in glob.glob(os.path.join(here, "test_*.py")))
    shared = [m for m in modules if m in SHARED_ON_TENSORFLOW]
    runs = [("tensorflow", shared)] + [("tensorflow", [m]) for m in modules if m not in SHARED_ON_TENSORFLOW]
    for backend in ("jax", "torch"):
        runs += [(backend, rest + not_independent)] + [(backend, [m, *not_independent]) for m in ISOLATED_MODULES]
    failed, took = [], []
    for backend, args in runs:
        label = " ".join(
            [backend, *(a for a in args if a.endswith(".py") and (backend == "tensorflow" or a in ISOLATED_MODULES))]
        )
        print(f"\n===== KERAS_BACKEND={label} =====", flush=True)
        env = dict(os.environ, KERAS_BACKEND=backend)
        start = time.monotonic()
        # --durations: each process names its slowest tests, so a CI log shows where the time goes.
        code = subprocess.call([sys.executable, "-m", "pytest", "--durations=5", *args, *extra], env=env)
        took.append((time.monotonic() - start, label if len(label) < 200 else f"{backend} (shared process)"))
        if code:
            failed.append(f"{label} (exit {code})")
    print("\nslowest pytest processes: " + "; ".join(f"{label} {s:.0f} s" for s, label in sorted(took)[::-1][:8]))
    print("\nfailed: " + ", ".join(failed) if failed else "\nall backends passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
