"""Test set-up shared by every test module.

torch/torchvision (through timm) must be imported before TensorFlow: the other
order crashes the process on some Linux machines. Importing them here, before
any test module imports keras, makes the order impossible to get wrong.

The contributor's fast loop runs modules that never touch torch or timm
(`TORCH_FREE_MODULES`); when every module named on the command line is one of
them, torch is not imported at all (seconds saved per run), and a module that
imports it anyway fails at once instead of crashing later.
"""

import gc
import importlib.abc
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TORCH_FREE_MODULES = {
    "test_arguments.py",
    "test_depthwise_formulations.py",
    "test_fast_path.py",
    "test_finetune.py",
    "test_keras_compat.py",
    "test_keras_files.py",
    "test_layers.py",
    "test_lint.py",
    "test_training.py",
}


def _torch_free_run(argv):
    """True when the command line names test modules and each is in `TORCH_FREE_MODULES`."""
    named = [os.path.basename(a.split("::")[0]) for a in argv[1:] if a.split("::")[0].endswith(".py")]
    return bool(named) and all(name in TORCH_FREE_MODULES for name in named)


class _NoTorch(importlib.abc.MetaPathFinder):
    """Makes an import of torch or timm fail at once, as if they were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm", "torchvision"):
            raise ModuleNotFoundError(f"{name} in a torch-free test run (see tests/conftest.py)")


if _torch_free_run(sys.argv) and os.environ["KERAS_BACKEND"] != "torch":
    sys.meta_path.insert(0, _NoTorch())
else:
    import timm  # noqa: F401
    import torch  # noqa: F401  (must precede keras / tensorflow)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()


@pytest.fixture(autouse=True)
def _seed_everything():
    keras.utils.set_random_seed(0)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)
    np.random.seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(autouse=True, scope="module")
def _free_keras_state_between_modules():
    """What Keras and TensorFlow keep of a module's models is released before the next module runs."""
    yield
    keras.backend.clear_session()
    gc.collect()
