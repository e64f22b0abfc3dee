"""int8 against float32 on the same weights: Keras `model.quantize("int8")` and LiteRT's dynamic-range int8.

For each model of the representative set (every timm parameter randomized, then
converted), the float32 Keras model's logits are compared with the int8 ones on
16 random images and on scikit-image's colour photos through the model's own
preprocessing (timm's evaluation transform): max|int8 - float32| / max|float32|
and top-1 agreement. Sizes on disk come from the exported files. TensorFlow backend.

    python benchmarks/int8_agreement.py            # writes results/int8.json
"""

import os

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import timm  # noqa: E402
import torch  # noqa: E402,F401  torch and timm before TensorFlow: the other order crashes some Linux machines

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import report  # noqa: E402

MODELS = ("convnext_atto", "convnextv2_atto", "convnext_atto_ols", "convnext_atto_rms")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "retina", "immunohistochemistry", "colorwheel")


def photos(preprocess):
    """scikit-image's colour photos, preprocessed as the model's weights expect."""
    import numpy as np
    import skimage.data

    return np.stack([preprocess(getattr(skimage.data, name)()[..., :3]) for name in PHOTOS]).astype("float32")


def agreement(int8, float32):
    import numpy as np

    int8, float32 = np.asarray(int8, np.float64), np.asarray(float32, np.float64)
    return {
        "max_rel_diff": float(np.abs(int8 - float32).max() / np.abs(float32).max()),
        "top1_agreement": float((int8.argmax(-1) == float32.argmax(-1)).mean()),
    }


def measure(arch, folder):
    import keras
    import numpy as np

    from converters import convert
    from convnext_hub import Preprocessor, export
    from convnext_hub.convert.randomize import randomize_

    reference = randomize_(timm.create_model(arch), 0).eval()
    state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    model = convert(state, arch=arch)
    sets = {
        "random images": np.random.RandomState(0).standard_normal((16, 224, 224, 3)).astype("float32"),
        "photos": photos(Preprocessor(dict(reference.pretrained_cfg))),
    }
    float_logits = {name: keras.ops.convert_to_numpy(model(x)) for name, x in sets.items()}
    paths = export.export(model, folder / "float32", ["saved_model", "litert", "litert_int8"], image_size=(224, 224))
    row = {"model": arch, "size_mb": {fmt: export.size_on_disk(p) / 1e6 for fmt, p in paths.items()}}
    for name, x in sets.items():
        (lite,) = export.run_artifact("litert_int8", paths["litert_int8"], x)
        row[f"litert_int8 {name}"] = agreement(lite, float_logits[name])
    model.quantize("int8")
    row["size_mb"]["saved_model_int8"] = (
        export.size_on_disk(
            export.export(model, folder / "int8", ["saved_model"], image_size=(224, 224))["saved_model"]
        )
        / 1e6
    )
    for name, x in sets.items():
        row[f"keras_int8 {name}"] = agreement(keras.ops.convert_to_numpy(model(x)), float_logits[name])
    print(row, flush=True)
    return row


def main():
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(arch, Path(folder) / arch) for arch in MODELS]
    print(f"wrote {report.write_json('int8', {'photos': list(PHOTOS), 'rows': rows})}")


if __name__ == "__main__":
    main()
