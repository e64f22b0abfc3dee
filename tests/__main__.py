"""Runs the whole suite on TensorFlow, then the backend-dependent tests on JAX and torch.

    python -m tests            # everything, as CI does
    python -m tests -x -k atto # extra arguments go to every pytest run

Keras fixes its backend at import, so each backend gets its own pytest process.
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


def main(extra):
    runs = [("tensorflow", [])] + [(b, BACKEND_MODULES + ["-m", "not backend_independent"]) for b in ("jax", "torch")]
    failed = []
    for backend, args in runs:
        print(f"\n===== KERAS_BACKEND={backend} =====", flush=True)
        env = dict(os.environ, KERAS_BACKEND=backend)
        code = subprocess.call([sys.executable, "-m", "pytest", *args, *extra], env=env)
        if code:
            failed.append(f"{backend} (exit {code})")
    print("\nfailed: " + ", ".join(failed) if failed else "\nall backends passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
