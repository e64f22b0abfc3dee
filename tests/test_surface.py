"""The user-facing surface: what the project writes it reads back, `pretrained_cfg` travels,
custom geometries convert, user errors are one line, loads raise no false warnings, and
a user's own `checkpoints/` / `converters/` folders cannot shadow the packages."""

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import timm
import torch

import convnext_hub
import convnext_hub.config
from converters import ArchitectureError, convert, export_timm_state_dict, load_checkpoint, timm_to_keras, verification
from converters import publish as publish_cli
from convnext_hub import saved_folder
from convnext_hub.hub import load_pretrained
from tests.checkpoint_factory import (
    random_hf_model,
    randomize_,
    save_safetensors,
    state_dict_numpy,
    timm_to_official,
)
from tests.hub_server import local_hub, set_offline, upload_timm_checkpoint  # noqa: F401  (fixture)

REPO_ROOT = Path(__file__).resolve().parents[1]
ATTO = "convnext_atto.d2_in1k"
IMAGES = np.random.RandomState(3).standard_normal((2, 64, 72, 3)).astype("float32")


def outputs(model, images=IMAGES):
    return keras.ops.convert_to_numpy(model(images))


@pytest.fixture(scope="module")
def atto_file(tmp_path_factory):
    """A random convnext_atto checkpoint (every parameter randomized) as safetensors, and its numpy state dict."""
    model = randomize_(timm.create_model("convnext_atto", num_classes=7), seed=4).eval()
    path = tmp_path_factory.mktemp("atto") / "atto.safetensors"
    save_safetensors(model.state_dict(), path)
    return path, state_dict_numpy(model)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(convnext_hub.config.current(), "cache_dir", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _no_false_alarms(record, caplog):
    """No Python warning and no log record above INFO came out of a load."""
    alarms = [str(w.message) for w in record if issubclass(w.category, (UserWarning, RuntimeWarning))]
    alarms += [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not alarms, alarms


# --------------------------------------------------------------------------- what the project writes, it reads


@pytest.mark.parametrize("fmt", ["weights", "keras"])
def test_every_cli_output_loads_back(atto_file, tmp_path, fmt, caplog):
    """`timm_to_keras --format weights|keras` output, as a folder or its file, loads through every loader."""
    path, state_dict = atto_file
    out = tmp_path / "out"
    assert timm_to_keras.main([str(path), "--out", str(out), "--format", fmt]) == 0
    config = json.loads((out / saved_folder.CONFIG_FILE).read_text())
    assert config["format"] == "convnext_hub" and config["format_version"] == saved_folder.FORMAT_VERSION
    weights_file = out / config["weights_file"]
    assert weights_file.is_file() and weights_file.name == ("model.keras" if fmt == "keras" else "model.weights.h5")
    expected = outputs(convert(state_dict))
    caplog.clear()
    with warnings.catch_warnings(record=True) as record, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        loaded = [
            load_pretrained(out),
            load_pretrained(str(weights_file)),
            convnext_hub.create_model("convnext_atto", num_classes=7, pretrained=out),
            convnext_hub.create_model("convnext_atto", num_classes=7, pretrained=weights_file),
        ]
    _no_false_alarms(record, caplog)
    for model in loaded:
        np.testing.assert_array_equal(outputs(model), expected)
    assert loaded[0].pretrained_cfg["source"] == {"path": str(path)}


def test_publish_dry_run_folder_loads_back(local_hub, atto_file, cache_dir, tmp_path):
    """`publish --dry-run DIR` writes the same saved-folder schema; the folder loads as the CLI's does."""
    path, state_dict = atto_file
    upload_timm_checkpoint(local_hub, ATTO, path, num_classes=7)
    folder = tmp_path / "dry"
    assert publish_cli.main([ATTO, "--repo-id", "org/atto", "--dry-run", str(folder)]) == 0
    saved = saved_folder.read(folder)
    assert saved.config["format_version"] == saved_folder.FORMAT_VERSION
    assert saved.config["equivalence"]["passed"] and set(saved.config["equivalence"]["outputs"]) == {
        "stage 0",
        "stage 1",
        "stage 2",
        "stage 3",
        "logits",
    }
    expected = outputs(convert(state_dict))
    np.testing.assert_array_equal(outputs(load_pretrained(folder)), expected)
    np.testing.assert_array_equal(
        outputs(convnext_hub.create_model("convnext_atto", num_classes=7, pretrained=folder)), expected
    )


def test_saved_folder_from_a_newer_schema_is_refused_in_one_line(atto_file, tmp_path):
    path, _ = atto_file
    out = tmp_path / "out"
    assert timm_to_keras.main([str(path), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "format_version": saved_folder.FORMAT_VERSION + 1}))
    with pytest.raises(saved_folder.NotASavedFolderError, match="newer than this convnext_hub reads"):
        load_pretrained(out)


# --------------------------------------------------------------------------- pretrained_cfg travels


def test_pretrained_cfg_survives_keras_save_config_and_folders(local_hub, atto_file, cache_dir, tmp_path):
    path, _ = atto_file
    upload_timm_checkpoint(local_hub, ATTO, path, num_classes=7)
    model = load_pretrained(ATTO)
    cfg = model.pretrained_cfg
    for key in ("mean", "std", "crop_pct", "interpolation", "license", "label_set", "source"):
        assert key in cfg, key
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert reloaded.pretrained_cfg == json.loads(json.dumps(cfg))
    assert type(model).from_config(model.get_config()).pretrained_cfg == cfg
    np.testing.assert_array_equal(outputs(reloaded), outputs(model))
    photo = (np.random.RandomState(0).rand(90, 120, 3) * 255).astype("uint8")
    np.testing.assert_array_equal(
        convnext_hub.Preprocessor(reloaded.pretrained_cfg)([photo]), convnext_hub.Preprocessor(cfg)([photo])
    )
    out = tmp_path / "cli"
    assert timm_to_keras.main([ATTO, "--out", str(out)]) == 0
    assert saved_folder.read(out).pretrained_cfg == json.loads(json.dumps(cfg))
    assert load_pretrained(out).pretrained_cfg["mean"] == cfg["mean"]


def test_get_config_is_keras_model_config_plus_constructor_arguments():
    import inspect

    model = convnext_hub.create_model("convnext_atto", dtype="mixed_bfloat16", input_shape=(64, 64, 3))
    config = model.get_config()
    arguments = set(inspect.signature(convnext_hub.ConvNeXt.__init__).parameters) - {"self", "kwargs"}
    assert set(config) == arguments | {"trainable"}
    assert config["dtype"]["config"]["name"] == "mixed_bfloat16" and config["name"] == "convnext_atto"


# --------------------------------------------------------------------------- custom geometries


def _custom_timm(use_grn, seed, **kwargs):
    from timm.models.convnext import ConvNeXt

    ls = None if use_grn else 1e-6
    model = ConvNeXt(
        depths=(1, 2, 3, 1), dims=(16, 24, 40, 56), use_grn=use_grn, ls_init_value=ls, num_classes=5, **kwargs
    )
    return randomize_(model, seed).eval()


@pytest.mark.parametrize(
    "use_grn, kwargs",
    [
        (False, {}),
        (True, {}),
        (False, {"head_norm_first": True, "conv_mlp": True}),
        (True, {"stem_type": "overlap_tiered", "kernel_sizes": 5}),
    ],
)
def test_custom_timm_geometry_converts_equal_and_round_trips(use_grn, kwargs, tmp_path):
    reference = _custom_timm(use_grn, seed=11, **kwargs)
    path = tmp_path / "custom.safetensors"
    save_safetensors(reference.state_dict(), path)
    model = convert(load_checkpoint(path))
    assert model.architecture is None and tuple(model.depths) == (1, 2, 3, 1) and tuple(model.dims) == (16, 24, 40, 56)
    for size in ((64, 64), (67, 45)):
        report = verification.compare(model, reference, verification.random_images(*size))
        assert report.passed and len(report.comparisons) == 5, report.lines()
    exported = export_timm_state_dict(model)
    original = state_dict_numpy(reference)
    assert set(exported) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key].reshape(value.shape), value)
    out = tmp_path / "out"
    assert timm_to_keras.main([str(path), "--out", str(out), "--verify"]) == 0
    np.testing.assert_array_equal(outputs(load_pretrained(out)), outputs(model))
    np.testing.assert_array_equal(outputs(load_pretrained(path)), outputs(model))


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_custom_hugging_face_geometry_equals_its_own_outputs(kind, tmp_path):
    hf = random_hf_model(kind, depths=(1, 1, 2, 1), hidden_sizes=(16, 32, 48, 64), num_labels=6, seed=5)
    hf.save_pretrained(tmp_path / "hf")
    model = convert(load_checkpoint(tmp_path / "hf"))
    assert model.architecture is None and model.num_classes == 6
    images = verification.random_images(64, 64)
    with torch.no_grad():
        expected = hf(torch.from_numpy(images).permute(0, 3, 1, 2)).logits.numpy()
    actual = outputs(model, images)
    assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()


def test_custom_official_layout_converts_equal(tmp_path):
    reference = _custom_timm(True, seed=12)
    path = tmp_path / "official.pth"
    torch.save(
        {
            "model": {
                k: torch.from_numpy(np.ascontiguousarray(v))
                for k, v in timm_to_official(state_dict_numpy(reference)).items()
            }
        },
        path,
    )
    model = convert(load_checkpoint(path))
    report = verification.compare(model, reference, verification.random_images(64, 64))
    assert report.passed and len(report.comparisons) == 5, report.lines()


def test_bias_free_custom_norm_must_be_named(tmp_path):
    from timm.models.convnext import ConvNeXt

    reference = randomize_(
        ConvNeXt(depths=(1, 1, 1, 1), dims=(16, 24, 32, 40), norm_layer="rmsnorm2d", conv_mlp=True, num_classes=3), 2
    ).eval()
    state_dict = state_dict_numpy(reference)
    with pytest.raises(ArchitectureError, match="norm='rmsnorm2d'"):
        convert(state_dict)
    model = convert(state_dict, norm="rmsnorm2d")
    assert verification.compare(model, reference, verification.random_images(64, 64)).passed


# --------------------------------------------------------------------------- errors name the file, in one line


def test_errors_of_a_loaded_mapping_name_its_file(atto_file, tmp_path):
    path, state_dict = atto_file
    with pytest.raises(ArchitectureError, match=str(path).replace(".", r"\.")):
        convert(load_checkpoint(path), arch="convnextv2_atto")


def test_missing_path_is_said_to_be_missing(tmp_path):
    for name in (str(tmp_path / "missing.safetensors"), "missing.pth", "some/folder"):
        with pytest.raises(FileNotFoundError, match="no such file or folder"):
            load_pretrained(name)


def _cli_cases(atto_file, tmp_path):
    path, _ = atto_file
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    return {
        "missing file": ([str(tmp_path / "nope.safetensors")], "no such file or folder"),
        "unknown name": (["convnext_nope"], "Unknown checkpoint name"),
        "unknown random-init": (["--random-init", "convnext_nope"], "Unknown architecture"),
        "bad file": ([str(junk)], str(junk)),
        "wrong arch": ([str(path), "--arch", "convnextv2_atto"], "does not fit convnextv2_atto"),
        "unwritable out": ([str(path), "--out", str(blocker / "sub")], str(blocker)),
        "offline, nothing cached": ([ATTO], "offline"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "unknown name",
        "unknown random-init",
        "bad file",
        "wrong arch",
        "unwritable out",
        "offline, nothing cached",
    ],
)
def test_cli_user_errors_are_one_line(case, atto_file, tmp_path, cache_dir, monkeypatch, capsys, local_hub):
    argv, fragment = _cli_cases(atto_file, tmp_path)[case]
    if "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path / "out")]
    set_offline(monkeypatch, case == "offline, nothing cached")
    assert timm_to_keras.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: ") and fragment in err[0], err
    assert len(err) == 1 or (len(err) == 2 and err[1].startswith("hint: ")), err
    assert not (tmp_path / "out").exists()
    assert timm_to_keras.main([*argv, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_publish_user_errors_are_one_line(tmp_path, cache_dir, capsys):
    for name in ("convnext_nope", str(tmp_path / "missing.safetensors")):
        assert publish_cli.main([name, "--repo-id", "org/x", "--dry-run", str(tmp_path / "dry")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err


def _run(args, cwd, env=None, timeout=600):
    env = {**os.environ, **(env or {})}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user's shell has
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_process_output_is_clean(atto_file, tmp_path):
    """A real process: no TensorFlow start-up lines, no progress bar in redirected output, one overall
    PASS line, and a stated reason when --num-classes keeps the logits from being compared."""
    path, _ = atto_file
    done = _run(
        ["-m", "converters.timm_to_keras", str(path), "--out", str(tmp_path / "o"), "--num-classes", "3", "--verify"],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "cuInit" not in done.stderr and "absl::InitializeLog" not in done.stderr, done.stderr
    assert "\r" not in done.stderr and "tensor/s" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.strip().startswith("PASS:") for line in lines) == 1
    assert any("not compared" in line and "--num-classes 3" in line for line in lines), done.stdout
    missing = _run(["-m", "converters.timm_to_keras", "nope.safetensors", "--out", "x"], cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip() == "error: nope.safetensors: no such file or folder"


# --------------------------------------------------------------------------- generic package names


def test_users_checkpoints_and_converters_folders_do_not_shadow_the_packages(atto_file, tmp_path):
    path, _ = atto_file
    work = tmp_path / "project"
    (work / "checkpoints").mkdir(parents=True)
    (work / "converters").mkdir()
    (work / "checkpoints" / "my_model.pth").write_bytes(b"user data")
    script = (
        "import convnext_hub; print(len(convnext_hub.list_pretrained()));"
        f"m = convnext_hub.load_pretrained({str(path)!r}); print(m.architecture)"
    )
    done = _run(["-c", script], cwd=work)
    assert done.returncode == 0 and done.stdout.split() == ["98", "convnext_atto"], done.stderr
    converted = _run(["-m", "converters.timm_to_keras", str(path), "--out", "out"], cwd=work)
    assert converted.returncode == 0 and (work / "out" / "config.json").is_file(), converted.stderr
    shown = _run(["-m", "converters.publish", "--help"], cwd=work)
    assert shown.returncode == 0 and "--repo-id" in shown.stdout


def test_model_without_checkpoint_gets_timms_default_transform():
    model = convnext_hub.create_model("convnext_atto")
    reloaded = type(model).from_config(model.get_config())
    assert reloaded.pretrained_cfg is None
    photo = (np.random.RandomState(1).rand(300, 400, 3) * 255).astype("uint8")
    batch = convnext_hub.Preprocessor(reloaded.pretrained_cfg)([photo])
    default = convnext_hub.Preprocessor(
        {
            "input_size": (3, 224, 224),
            "crop_pct": 0.875,
            "interpolation": "bicubic",
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
        }
    )([photo])
    assert batch.shape == (1, 224, 224, 3)
    np.testing.assert_array_equal(batch, default)


# --------------------------------------------------------------------------- --export


def test_cli_exports_beside_the_weights_and_checks_them(atto_file, tmp_path, capsys):
    path, _ = atto_file
    out = tmp_path / "out"
    assert timm_to_keras.main([str(path), "--out", str(out), "--export", "onnx,litert", "--verify"]) == 0
    printed = capsys.readouterr().out
    assert {"model.onnx", "model.tflite", "model.weights.h5", "config.json"} <= {p.name for p in out.iterdir()}
    assert "  onnx:" in printed and "  litert:" in printed
    assert printed.count("PASS: worst") == 3  # the Keras model, then each artifact
    np.testing.assert_array_equal(outputs(load_pretrained(out)), outputs(convert(load_checkpoint(path))))


def test_cli_export_without_its_tool_names_the_package(atto_file, tmp_path, capsys, monkeypatch):
    import importlib.util

    path, _ = atto_file
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert timm_to_keras.main([str(path), "--out", str(tmp_path / "out"), "--export", "onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "onnxruntime" in err[0] and 'pip install "convnext_hub[export]"' in err[0], err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        timm_to_keras.main([str(path), "--out", str(tmp_path / "out"), "--export", "onnx,pdf"])
    assert exit_info.value.code == 2 and "pdf" in capsys.readouterr().err
