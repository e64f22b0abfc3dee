"""Training on several devices and processes with `keras.distribution` (JAX) equals training on one.

Three JAX processes run at once, whatever this process's backend (`tests/distributed_runs.py`): one with
8 simulated CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`) trains the same tiny
ConvNeXt V2 from the same weights on the same global batches for 3 AdamW steps on 1 device, under
`DataParallel` on 8 devices and under `ModelParallel` on a 2x4 ("batch", "model") mesh with
`convnext_hub.distribution.get_layout_map`; two more, of 2 devices each, join through
`keras.distribution.initialize` on localhost and train under `DataParallel` over the 4 devices. The losses
and every weight must equal the 1-device run's within `TOLERANCE`, and every weight must have moved by at
least 100 times that, so that equality says something. The 8-device process then runs `fine_tune` and
`fine_tune_folder` under `DataParallel`.

The module is backend-independent: it runs once, in the TensorFlow process of the suite.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from convnext_hub import ConvNeXt, variants
from convnext_hub.distribution import batch_shards, check_batches, get_layout_map

pytestmark = pytest.mark.backend_independent

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5
# Measured differences from the 1-device run on the project's CPU: DataParallel 1.1e-6, two processes
# 1.4e-6, ModelParallel 2.3e-6 (weights); 2.4e-7 (losses). The smallest move of a weight: 7.4e-3.
MIN_MOVE = 100 * TOLERANCE
TIMEOUT = 300  # seconds for the three processes together


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Starts the three JAX processes together (they share the 2 cores of the test machine) and reads back
    what each wrote: `{run name: (arrays, info)}`."""
    out = tmp_path_factory.mktemp("distributed")
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        CUDA_VISIBLE_DEVICES="",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=REPO,
    )
    port = _free_port()
    commands = {
        "devices": (["devices", str(out)], 8),
        "process_0": (["process", "0", str(port), str(out)], 2),
        "process_1": (["process", "1", str(port), str(out)], 2),
    }
    processes = {}
    for name, (args, devices) in commands.items():
        log = open(out / f"{name}.log", "w")
        flags = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        processes[name] = (
            subprocess.Popen(
                [sys.executable, "-m", "tests.distributed_runs", *args],
                cwd=REPO,
                env=flags,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
            log,
        )
    failed = []
    try:
        for name, (process, log) in processes.items():
            try:
                code = process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                code = "timed out"
            log.close()
            if code != 0:
                failed.append(f"{name} ({code}):\n{(out / f'{name}.log').read_text()[-4000:]}")
    finally:
        for process, _ in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    assert not failed, "\n".join(failed)
    results = {}
    for name in ("one_device", "data_parallel", "model_parallel", "process_0", "process_1", "recipes"):
        with np.load(out / f"{name}.npz") as arrays:
            results[name] = ({k: arrays[k] for k in arrays.files}, json.loads((out / f"{name}.json").read_text()))
    return results


def _differences(run, reference):
    """The largest |difference| of the losses and of each trainable variable after training, by path."""
    losses = float(np.max(np.abs(run["losses"] - reference["losses"])))
    weights = {k[6:]: float(np.max(np.abs(run[k] - reference[k]))) for k in reference if k.startswith("after:")}
    return losses, weights


def _assert_equals_one_device(runs, name):
    reference, (run, _) = runs["one_device"][0], runs[name]
    assert len(reference["losses"]) == len(run["losses"]) == 3
    starts = [k for k in reference if k.startswith("before:")]
    assert sorted(k for k in run if k.startswith("before:")) == sorted(starts)
    for key in starts:  # the same start: the same weights, whatever the distribution
        np.testing.assert_array_equal(run[key], reference[key], err_msg=key)
    moved = {k[7:]: float(np.max(np.abs(reference["after:" + k[7:]] - reference[k]))) for k in starts}
    assert min(moved.values()) > MIN_MOVE, sorted(moved.items(), key=lambda item: item[1])[:3]
    losses, weights = _differences(run, reference)
    print(f"{name}: largest difference from 1 device: loss {losses:.2g}, weights {max(weights.values()):.2g}")
    assert losses < TOLERANCE, (losses, run["losses"], reference["losses"])
    worst = sorted(weights.items(), key=lambda item: -item[1])[:3]
    assert max(weights.values()) < TOLERANCE, worst


def test_data_parallel_on_8_devices_equals_1_device(runs):
    _assert_equals_one_device(runs, "data_parallel")
    assert runs["data_parallel"][1]["kernel_devices"] == 8  # replicated on every device


def test_2_processes_of_2_devices_equal_1_device(runs):
    for name in ("process_0", "process_1"):
        _assert_equals_one_device(runs, name)
    # Both processes hold the same replicated weights.
    first, second = runs["process_0"][0], runs["process_1"][0]
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def test_model_parallel_on_a_2x4_mesh_shards_the_dense_kernels_and_equals_1_device(runs):
    _assert_equals_one_device(runs, "model_parallel")
    sharding = runs["model_parallel"][1]["sharding"]
    expected = {  # path: (spec, whole shape, each device's shard): batch axis 2, model axis 4
        "stages_0_blocks_0_mlp_fc1/kernel": (["batch", "model"], [8, 32], [[4, 8]]),
        "stages_3_blocks_0_mlp_fc2/kernel": (["model", "batch"], [256, 64], [[64, 32]]),
        "head_fc/kernel": (["model", None], [64, 8], [[16, 8]]),
    }
    for path, (spec, shape, shards) in expected.items():
        found = sharding[path]
        assert (found["spec"], found["shape"], found["shard_shapes"]) == (spec, shape, shards), (path, found)
        # AdamW's two moments of the kernel are split as the kernel is.
        assert found["moment_specs"] == [f"P({', '.join(repr(a) for a in spec)})"], (path, found)


def test_fine_tune_and_fine_tune_folder_under_data_parallel(runs):
    """One-line errors for batches that do not split, then `python -m convnext_hub.finetune --data-parallel`."""
    info = runs["recipes"][1]
    assert info["errors"] == {
        "fine_tune 12 24": "DataParallel splits each batch over 8 devices: batch_size=12 must be a multiple of 8 "
        "(change the batch size or the number of samples)",
        "fine_tune 8 20": "DataParallel splits each batch over 8 devices: the last batch of 4 (20 samples in "
        "batches of 8) must be a multiple of 8 (change the batch size or the number of samples)",
        "fine_tune_folder val_split=0.25": "DataParallel splits each batch over 8 devices: the last batch of 4 "
        "(12 samples in batches of 8) and the last batch of 4 (4 samples in batches of 8) must be a multiple of 8 "
        "(change the batch size or the number of samples)",
    }
    assert info["uneven_left_nothing"]  # refused before anything was written
    # python -m convnext_hub.finetune --data-parallel: the whole run, over the 8 devices.
    assert info["command_exit_code"] == 0
    assert info["command_distribution"] == ["DataParallel", 8]
    assert {"checkpoint.npz", "config.json", "metrics.json", "model.weights.h5"} <= set(info["folder_files"])
    (epoch,) = info["folder_metrics"]
    assert np.isfinite(epoch["loss"]) and np.isfinite(epoch["val_loss"]), epoch


def test_data_parallel_option_needs_jax(tmp_path, capsys):
    """On another backend `--data-parallel` is a one-line error before anything is read or written."""
    from convnext_hub.finetune import __main__ as command

    if keras.backend.backend() == "jax":
        pytest.skip("JAX runs the option (test_fine_tune_and_fine_tune_folder_under_data_parallel)")
    out = tmp_path / "out"
    code = command.main(["convnext_atto", "--data", str(tmp_path / "none"), "--out", str(out), "--data-parallel"])
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err == (
        f"error: data parallel training needs the JAX backend (KERAS_BACKEND=jax); this process runs "
        f"{keras.backend.backend()}\n"
    )
    assert keras.distribution.distribution() is None


# --------------------------------------------------------------------------- in this process, any backend


def _mesh(shape=(2, 4), names=("batch", "model")):
    return keras.distribution.DeviceMesh(shape, list(names), devices=[f"cpu:{i}" for i in range(np.prod(shape))])


def test_layout_map_names_the_dense_kernels_only():
    layout_map = get_layout_map(_mesh())
    axes = {
        path: (layout_map[path].axes if layout_map[path] is not None else None)
        for path in (
            "stages_2_blocks_17_mlp_fc1/kernel",
            "stages_2_blocks_17_mlp_fc2/kernel",
            "head_pre_logits_fc/kernel",
            "head_fc/kernel",
            "backbone/stages_0_blocks_0_mlp_fc1/kernel",  # a model nested in another
            "stages_2_blocks_17_mlp_fc1/bias",
            "stages_2_blocks_17_conv_dw/kernel",
            "stages_1_downsample_1/kernel",
            "stem_0/kernel",
        )
    }
    assert axes == {
        "stages_2_blocks_17_mlp_fc1/kernel": ("batch", "model"),
        "stages_2_blocks_17_mlp_fc2/kernel": ("model", "batch"),
        "head_pre_logits_fc/kernel": ("batch", "model"),
        "head_fc/kernel": ("model", None),
        "backbone/stages_0_blocks_0_mlp_fc1/kernel": ("batch", "model"),
        "stages_2_blocks_17_mlp_fc1/bias": None,
        "stages_2_blocks_17_conv_dw/kernel": None,
        "stages_1_downsample_1/kernel": None,
        "stem_0/kernel": None,
    }
    renamed = get_layout_map(_mesh(names=("data", "tensor")), "tensor", "data")
    assert renamed["stages_0_blocks_0_mlp_fc2/kernel"].axes == ("tensor", "data")
    with pytest.raises(ValueError, match="'model' is not an axis"):
        get_layout_map(_mesh(names=("data", "tensor")))
    with pytest.raises(ValueError, match="DeviceMesh"):
        get_layout_map((2, 4))


def test_layout_map_finds_every_dense_kernel_of_the_models_and_nothing_else():
    """The patterns against the variable paths the models really have: ConvNeXt with a pre-logits layer,
    and keras-hub's classifier around its backbone (where keras-hub is installed)."""
    layout_map = get_layout_map(_mesh())
    # (model, its Dense kernels: fc1 and fc2 of each block, the pre-logits layer and the classifier)
    models = [(ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), head_hidden_size=16, num_classes=5), 2 * 5 + 2)]
    if importlib.util.find_spec("keras_hub") is not None:
        from convnext_hub.keras_hub import ConvNeXtBackbone, ConvNeXtImageClassifier

        backbone = ConvNeXtBackbone(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), image_shape=(32, 32, 3))
        models.append((ConvNeXtImageClassifier(backbone, num_classes=5, head_hidden_size=16), 2 * 4 + 2))
    for model, count in models:
        dense = {v.path for v in model.weights if v.path.endswith("/kernel") and len(v.shape) == 2}
        mapped = {v.path for v in model.weights if layout_map[v.path] is not None}
        assert mapped == dense and len(dense) == count, (type(model).__name__, sorted(dense), sorted(mapped))


def test_every_architecture_width_divides_by_8():
    """What `get_layout_map` states: meshes of up to 8 devices per axis split every architecture's kernels."""
    for name in variants.list_models():
        config = variants.architecture(name)
        widths = [*config["dims"], *(4 * d for d in config["dims"]), config.get("head_hidden_size") or 8]
        assert all(w % 8 == 0 for w in widths), (name, widths)


def test_check_batches_does_nothing_without_a_distribution():
    assert keras.distribution.distribution() is None
    assert batch_shards() == 1
    check_batches(3, 7, 5)
