"""Runs the whole suite on TensorFlow, then the backend-dependent tests on JAX and torch.

    python -m tests            # everything, as CI does
    python -m tests -x -k atto # extra arguments go to every pytest run

Keras fixes its backend at import, so each backend gets its own pytest process. The export and
keras-hub tests build and export many models; they run in pytest processes of their own, so that
what TensorFlow keeps of them does not add up with the rest of the suite in one 24 GB machine.
"""
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
]


# Modules that get a pytest process of their own (per backend).
ISOLATED_MODULES = ["tests/test_export.py", "tests/test_keras_hub.py"]


def main(extra):
    rest = [m for m in BACKEND_MODULES if m not in ISOLATED_MODULES]
    not_independent = ["-m", "not backend_independent"]
    runs = [("tensorflow", [f"--ignore={m}" for m in ISOLATED_MODULES])]
    runs += [("tensorflow", [m]) for m in ISOLATED_MODULES]
    for backend in ("jax", "torch"):
        runs += [(backend, rest + not_independent)] + [(backend, [m, *not_independent]) for m in ISOLATED_MODULES]
    failed = []
    for backend, args in runs:
        label = " ".join([backend, *(a for a in args if a in ISOLATED_MODULES)])
        print(f"\n===== KERAS_BACKEND={label} =====", flush=True)
        env = dict(os.environ, KERAS_BACKEND=backend)
        code = subprocess.call([sys.executable, "-m", "pytest", *args, *extra], env=env)
        if code:
            failed.append(f"{label} (exit {code})")
    print("\nfailed: " + ", ".join(failed) if failed else "\nall backends passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
