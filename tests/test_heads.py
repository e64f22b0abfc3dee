"""Head compatibility has one owner (`convnext_hub.heads`): a timm state dict and a Keras weights file of
the same stored model load the same layers into every kind of head, and leave the same layers fresh."""

import keras
import numpy as np
import pytest

from convnext_hub import ConvNeXt
from convnext_hub.convert.conversion import export_timm_state_dict, load_timm_state_dict
from convnext_hub.heads import Head
from convnext_hub.weights_io import load_weights_file

GEOMETRY = {"depths": (1, 1, 1, 1), "dims": (8, 8, 8, 16), "head_norm_first": True, "input_shape": (32, 32, 3)}
STORED_CLASSES = 5

# (model head arguments, the layers that must take the stored weights besides the stages)
CASES = [
    ({"num_classes": STORED_CLASSES}, {"norm_pre", "head_fc"}),
    ({"num_classes": 7}, {"norm_pre"}),  # another classifier size: the classifier stays fresh
    ({"num_classes": 0}, {"norm_pre"}),
    ({"include_top": False}, {"norm_pre"}),
    ({"features_only": True}, set()),
]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A model of 5 classes, every weight random, as a `.weights.h5` file and as a timm state dict."""
    model = ConvNeXt(**GEOMETRY, num_classes=STORED_CLASSES)
    rng = np.random.default_rng(0)
    for variable in model.weights:
        variable.assign(rng.standard_normal(variable.shape).astype("float32"))
    path = tmp_path_factory.mktemp("heads") / "stored.weights.h5"
    model.save_weights(path)
    values = {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}
    return path, export_timm_state_dict(model), values


def _taken(model, values):
    """Layers of `model` whose every weight equals the stored model's weight at the same path."""
    layers = {}
    for variable in model.weights:
        layer = variable.path.split("/")[0]
        same = variable.path in values and np.array_equal(keras.ops.convert_to_numpy(variable), values[variable.path])
        layers[layer] = layers.get(layer, True) and same
    return {layer for layer, same in layers.items() if same}


@pytest.mark.backend_independent
@pytest.mark.parametrize("head, head_layers", CASES, ids=lambda c: str(c))
def test_every_loading_path_takes_the_same_head_layers(stored, head, head_layers):
    path, state_dict, values = stored
    from_file, from_timm = ConvNeXt(**GEOMETRY, **head), ConvNeXt(**GEOMETRY, **head)
    load_weights_file(from_file, path)
    load_timm_state_dict(from_timm, state_dict)
    stages = {v.path.split("/")[0] for v in from_file.weights} - {"norm_pre", "head_norm", "head_fc"}
    assert _taken(from_file, values) == stages | head_layers
    assert _taken(from_timm, values) == stages | head_layers


@pytest.mark.backend_independent
def test_head_decisions():
    stored = Head(num_classes=STORED_CLASSES)
    assert Head(num_classes=STORED_CLASSES).takes_all_of(stored)
    assert not Head(num_classes=7).takes_all_of(stored)
    assert Head(include_top=False).takes_all_of(stored)  # nothing of its head is missing from the file
    assert not Head(num_classes=STORED_CLASSES).takes_all_of(Head(include_top=False))
    assert not Head(features_only=True).takes_classifier(1000)
    assert Head.from_config({"num_classes": 3, "dims": [8]}) == Head(num_classes=3)
