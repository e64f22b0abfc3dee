"""Test set-up shared by every test module.

torch/torchvision (through timm) must be imported before TensorFlow: the other
order crashes the process on some Linux machines. Importing them here, before
any test module imports keras, makes the order impossible to get wrong.
"""

import gc
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import timm  # noqa: E402,F401
import torch  # noqa: E402,F401  (must precede keras / tensorflow)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()


@pytest.fixture(autouse=True)
def _seed_everything():
    keras.utils.set_random_seed(0)
    torch.manual_seed(0)
    np.random.seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(autouse=True, scope="module")
def _free_keras_state_between_modules():
    """What Keras and TensorFlow keep of a module's models is released before the next module runs."""
    yield
    keras.backend.clear_session()
    gc.collect()
