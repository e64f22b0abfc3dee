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

# Modules whose results depend on the Keras backend; the rest run once, on TensorFlow.
BACKEND_MODULES = [
    "tests/test_layers.py",
    "tests/test_models.py",
    "tests/test_fast_path.py",
    "tests/test_training.py",
    "tests/test_equivalence.py",
    "tests/test_preprocessing.py",
    "tests/test_finetune.py",
    "tests/test_depthwise_formulations.py",
    "tests/test_keras_hub.py",
    "tests/test_export.py",
    "tests/test_cache_integrity.py",  # every backend keeps the entry's mapped pages as its weights
    "tests/test_hub.py",  # first and cached loads differ by backend in what a model keeps
]


# Modules that get a pytest process of their own (per backend).
ISOLATED_MODULES = ["tests/test_export.py", "tests/test_keras_hub.py"]


def main(extra):
    rest = [m for m in BACKEND_MODULES if m not in ISOLATED_MODULES]
    not_independent = ["-m", "not backend_independent"]
    here = os.path.dirname(os.path.abspath(__file__))
    modules = sorted(os.path.relpath(m) for m in glob.glob(os.path.join(here, "test_*.py")))
    runs = [("tensorflow", [m]) for m in modules]
    for backend in ("jax", "torch"):
        runs += [(backend, rest + not_independent)] + [(backend, [m, *not_independent]) for m in ISOLATED_MODULES]
    failed = []
    for backend, args in runs:
        label = " ".join(
            [backend, *(a for a in args if a.endswith(".py") and (backend == "tensorflow" or a in ISOLATED_MODULES))]
        )
        print(f"\n===== KERAS_BACKEND={label} =====", flush=True)
        env = dict(os.environ, KERAS_BACKEND=backend)
        code = subprocess.call([sys.executable, "-m", "pytest", *args, *extra], env=env)
        if code:
            failed.append(f"{label} (exit {code})")
    print("\nfailed: " + ", ".join(failed) if failed else "\nall backends passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
