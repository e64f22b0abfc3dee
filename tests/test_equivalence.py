"""Keras outputs equal the source framework's, with every parameter randomized first.

Compared: logits and every stage's feature map, at a square and a non-square
odd input size; bar max|d| <= 1e-5 * max|reference| in float32 (DESIGN.md §3).
All 28 timm architectures on TensorFlow; a representative set on JAX and torch.
"""
import keras
import numpy as np
import pytest
import timm
import torch

from converters import convert, export_timm_state_dict, load_checkpoint
from tests.checkpoint_factory import (
    random_hf_model,
    random_timm_model,
    save_safetensors,
    state_dict_numpy,
    timm_to_official,
)
from tests.conftest import BACKEND

TOLERANCE = 1e-5
SLOW = {"convnext_xlarge", "convnext_xxlarge", "convnextv2_huge"}
REPRESENTATIVE = [
    "convnext_atto", "convnextv2_atto", "convnext_atto_ols", "convnext_atto_rms",
    "convnext_zepto_rms_ols", "convnext_tiny_hnf", "convnext_large_mlp", "convnext_xxlarge",
]
ARCHS = timm.list_models("convnext*") if BACKEND == "tensorflow" else REPRESENTATIVE


def _params(archs):
    return [pytest.param(a, marks=pytest.mark.slow) if a in SLOW else a for a in archs]


def _sizes(arch):
    return [(32, 32), (37, 45)] if arch in SLOW else [(64, 64), (67, 45)]


def _inputs(height, width, seed=0):
    return np.random.RandomState(seed).standard_normal((2, 3, height, width)).astype("float32")


def _with_stage_outputs(model):
    """The same Keras model, also returning each stage's feature map (NHWC)."""
    ends = [model.get_layer(f"stages_{i}_blocks_{d - 1}_add").output for i, d in enumerate(model.depths)]
    return keras.Model(model.input, ends + [model.output])


def _keras_outputs(model, x_nchw):
    return [keras.ops.convert_to_numpy(y) for y in model(x_nchw.transpose(0, 2, 3, 1), training=False)]


def _timm_outputs(model, x_nchw):
    with torch.no_grad():
        final, stages = model.forward_intermediates(torch.from_numpy(x_nchw))
        logits = model.forward_head(final)
    return [s.permute(0, 2, 3, 1).numpy() for s in stages] + [logits.numpy()]


def assert_close(actual, expected, what):
    scale = float(np.abs(expected).max())
    error = float(np.abs(actual - expected).max())
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert error <= TOLERANCE * scale, f"{what}: max|d| = {error:.3g} > {TOLERANCE} * {scale:.3g}"
    return error / scale


@pytest.mark.parametrize("arch", _params(ARCHS))
def test_timm_equivalence(arch):
    """timm -> Keras: logits and 4 stage maps match at two input sizes."""
    ref = random_timm_model(arch, num_classes=17, seed=1)
    model = _with_stage_outputs(convert(state_dict_numpy(ref), arch=arch, source=arch))
    for height, width in _sizes(arch):
        x = _inputs(height, width)
        for i, (a, e) in enumerate(zip(_keras_outputs(model, x), _timm_outputs(ref, x))):
            assert_close(a, e, f"{arch} {height}x{width} output {i}")


@pytest.mark.parametrize("arch", ["convnext_atto", "convnextv2_atto", "convnext_zepto_rms_ols", "convnext_large_mlp"])
def test_round_trip_to_timm(arch):
    """timm -> Keras -> timm state dict loads with strict=True and gives identical outputs."""
    ref = random_timm_model(arch, num_classes=5, seed=2)
    exported = export_timm_state_dict(convert(state_dict_numpy(ref), arch=arch))
    back = timm.create_model(arch, num_classes=5).eval()
    back.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    x = torch.from_numpy(_inputs(64, 64))
    with torch.no_grad():
        assert torch.equal(back(x), ref(x))


@pytest.mark.parametrize("arch", ["convnext_atto", "convnextv2_atto", "convnext_tiny"])
@pytest.mark.parametrize("pwconv_ndim", [2, 4])
def test_official_checkpoint(arch, pwconv_ndim, tmp_path):
    """facebookresearch layout (made by inverting timm's filter), read from a file by content."""
    ref = random_timm_model(arch, num_classes=7, seed=3)
    official = timm_to_official(state_dict_numpy(ref), pwconv_ndim=pwconv_ndim)
    path = tmp_path / "official.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in official.items()}}, path)
    model = _with_stage_outputs(convert(load_checkpoint(path), source=str(path)))
    assert model.layers[-1].name == "head_fc"
    x = _inputs(67, 45)
    for i, (a, e) in enumerate(zip(_keras_outputs(model, x), _timm_outputs(ref, x))):
        assert_close(a, e, f"official {arch} output {i}")


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_hugging_face_model(kind, tmp_path):
    """transformers ConvNext / ConvNextV2 saved with save_pretrained, compared with its own logits."""
    ref = random_hf_model(kind, depths=(2, 2, 6, 2), hidden_sizes=(40, 80, 160, 320), num_labels=9, seed=4)
    ref.save_pretrained(tmp_path)
    model = convert(load_checkpoint(tmp_path), source=str(tmp_path))
    assert model.architecture == ("convnext_atto" if kind == "v1" else "convnextv2_atto")
    x = _inputs(67, 45)
    with torch.no_grad():
        out = ref(pixel_values=torch.from_numpy(x), output_hidden_states=True)
    expected = [h.permute(0, 2, 3, 1).numpy() for h in out.hidden_states[1:]] + [out.logits.numpy()]
    actual = _keras_outputs(_with_stage_outputs(model), x)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a, e, f"HF {kind} output {i}")


def test_half_precision_file(tmp_path):
    """A bfloat16 safetensors file converts to the bfloat16-rounded timm model's outputs."""
    ref = random_timm_model("convnextv2_atto", num_classes=3, seed=5)
    path = tmp_path / "bf16.safetensors"
    save_safetensors(ref.state_dict(), path, dtype=torch.bfloat16)
    ref = ref.to(torch.bfloat16).float()  # the same rounding, compared in float32
    model = convert(load_checkpoint(path), source=str(path))
    x = _inputs(64, 64)
    logits = keras.ops.convert_to_numpy(model(x.transpose(0, 2, 3, 1)))
    assert_close(logits, _timm_outputs(ref, x)[-1], "bf16 logits")
