"""The runtime-only install works without torch, timm or keras-hub, whatever folders the user has.

Run by CI in a virtual environment made with the README's runtime-only command (a regular,
non-editable install, plus pytest for the local Hub server), from a working directory that holds
the user's own `checkpoints/` and `converters/` folders:

    python tests/runtime_only.py

It loads from a local safetensors file, from a local Hugging Face Hub (download, convert, cache,
then a cached load), converts with the CLI, and fine-tunes one step; then checks that torch, timm
and keras_hub were never imported. Not collected by pytest: the suite's conftest imports torch.
"""

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TIMM_TAG = "convnext_atto.d2_in1k"
NEVER_IMPORTED = ("torch", "timm", "keras_hub")


def main():
    for package in ("torch", "timm"):
        assert importlib.util.find_spec(package) is None, f"{package} is installed: this is no runtime-only set-up"
    work = Path(tempfile.mkdtemp(prefix="runtime-only-"))
    for shadow in ("checkpoints", "converters"):  # a user's own folders with generic names
        (work / shadow).mkdir()
        (work / shadow / "notes.txt").write_text("the user's files")
    os.chdir(work)
    imported = subprocess.run(
        [sys.executable, "-c", "import convnext_hub; print(len(convnext_hub.list_pretrained()))"],
        capture_output=True,
        text=True,
    )  # `-c` puts the working directory first on sys.path
    assert imported.returncode == 0 and imported.stdout.strip() == "98", imported.stderr

    import keras
    from safetensors.numpy import save_file

    import convnext_hub
    from converters import export_timm_state_dict

    images = np.random.RandomState(0).rand(2, 64, 64, 3).astype("float32")
    source = convnext_hub.create_model("convnext_atto", input_shape=(None, None, 3))
    expected = keras.ops.convert_to_numpy(source(images))
    save_file(export_timm_state_dict(source), "atto.safetensors")

    def same(model):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images)), expected, rtol=0, atol=1e-5)

    same(convnext_hub.load_pretrained("atto.safetensors"))
    done = subprocess.run(
        [sys.executable, "-m", "converters.timm_to_keras", "atto.safetensors", "--out", "out"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    same(convnext_hub.load_pretrained("out"))
    _through_local_hub(same)
    _fine_tune_one_step()
    imported = [name for name in NEVER_IMPORTED if name in sys.modules]
    assert not imported, f"imported at run time: {imported}"
    print(f"runtime-only install OK (Keras {keras.__version__}, backend {keras.backend.backend()}, no torch)")


def _through_local_hub(same):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test helpers only
    import convnext_hub
    from tests.hub_server import running_hub, upload_timm_checkpoint

    with running_hub(Path.cwd() / "hub") as hub:
        upload_timm_checkpoint(hub, TIMM_TAG, Path("atto.safetensors"))
        convnext_hub.config.set_cache_dir(Path.cwd() / "cache")
        same(convnext_hub.load_pretrained("convnext_atto"))  # downloaded, converted, cached
        same(convnext_hub.load_pretrained("convnext_atto"))  # from the cache
    sys.path.pop(0)


def _fine_tune_one_step():
    import convnext_hub
    from convnext_hub.finetune import fine_tune

    model = convnext_hub.load_pretrained("atto.safetensors", num_classes=3, input_shape=(32, 32, 3))
    x = np.random.RandomState(1).rand(4, 32, 32, 3).astype("float32")
    y = np.array([0, 1, 2, 0])
    head, full = fine_tune(model, (x, y), batch_size=4, head_epochs=1, epochs=1, head_lr=1e-3, peak_lr=1e-4)
    assert np.isfinite(full.history["loss"][-1])


if __name__ == "__main__":
    main()
