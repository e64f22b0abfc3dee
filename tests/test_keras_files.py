"""`pretrained=` on `.keras` files: code in the file is refused and never run."""

import json
import zipfile

import keras
import pytest

from convnext_hub import create_model
from convnext_hub.weights_io import read_keras_config


def _rewrite_config(path, edit):
    """Rewrites config.json inside a .keras archive with `edit(config)`."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_lambda_layer_is_refused(tmp_path):
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ValueError, match="Lambda"):
        create_model("convnext_atto", pretrained=str(path))


def test_foreign_module_is_refused_before_anything_runs(tmp_path):
    path = tmp_path / "evil.keras"
    create_model("convnext_atto", num_classes=3, input_shape=(32, 32, 3)).save(path)

    def inject(config):
        config["config"]["dtype"] = {"module": "os", "class_name": "system", "config": {"command": "touch x"}}

    _rewrite_config(path, inject)
    with pytest.raises(ValueError, match="'os'"):
        read_keras_config(path)
    with pytest.raises(ValueError, match="evil.keras"):
        create_model("convnext_atto", num_classes=3, pretrained=str(path))


def test_other_architecture_in_keras_file_is_refused(tmp_path):
    path = tmp_path / "v2.keras"
    create_model("convnextv2_atto", num_classes=3, input_shape=(32, 32, 3)).save(path)
    with pytest.raises(ValueError, match="use_grn"):
        create_model("convnext_atto", num_classes=3, pretrained=str(path))
