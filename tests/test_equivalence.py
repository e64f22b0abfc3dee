"""Keras outputs equal the source framework's, with every parameter randomized first.

Compared: logits and every stage's feature map, at a square and a non-square
odd input size; bar max|d| <= 1e-5 * max|reference| in float32, through
`convnext_hub.convert.verification.compare` (the comparison `--verify` uses; see tests/timm_comparison.py).
All 28 timm architectures on TensorFlow; a representative set on JAX and torch.
"""

import keras
import numpy as np
import pytest
import timm
import torch

from converters import convert, export_timm_state_dict, load_checkpoint
from convnext_hub import variants
from tests.checkpoint_factory import (
    random_hf_model,
    random_timm_model,
    save_safetensors,
    state_dict_numpy,
    timm_to_official,
)
from tests.conftest import BACKEND
from tests.timm_comparison import (
    STAGE_NAMES,
    assert_close,
    assert_matches_timm,
    compare,
    random_images,
)

SLOW = {"convnext_xlarge", "convnext_xxlarge", "convnextv2_huge"}
REPRESENTATIVE = [
    "convnext_atto",
    "convnextv2_atto",
    "convnext_atto_ols",
    "convnext_atto_rms",
    "convnext_zepto_rms_ols",
    "convnext_tiny_hnf",
    "convnext_large_mlp",
    "convnext_xxlarge",
]
ARCHS = timm.list_models("convnext*") if BACKEND == "tensorflow" else REPRESENTATIVE
# On JAX and torch the two largest representatives are built at a small geometry with their own other arguments
# (convnext_large_mlp's pre-logits head, convnext_xxlarge's norm epsilon of 1e-5): the layers that set them apart,
# at a size each backend converts in seconds instead of the minute 846M parameters take. TensorFlow checks every
# architecture at its own size.
SMALL_ON_OTHER_BACKENDS = {"convnext_large_mlp", "convnext_xxlarge"}
SMALL_GEOMETRY = {"depths": (1, 1, 2, 1), "dims": (16, 24, 40, 56)}


def _params(archs):
    return [pytest.param(a, marks=pytest.mark.slow) if a in SLOW else a for a in archs]


def _sizes(arch):
    return [(32, 32), (37, 45)] if arch in SLOW else [(64, 64), (67, 45)]


@pytest.mark.parametrize("arch", _params(ARCHS))
def test_timm_equivalence(arch):
    """timm -> Keras: logits and 4 stage maps match at two input sizes."""
    if BACKEND != "tensorflow" and arch in SMALL_ON_OTHER_BACKENDS:
        ref = random_timm_model(arch, num_classes=17, seed=1, **SMALL_GEOMETRY)
        # A custom geometry: the norm epsilon is the one argument its weights cannot tell.
        model = convert(state_dict_numpy(ref), norm_eps=ref.stem[1].eps, source=f"small {arch}")
        assert model.norm_eps == variants.architecture(arch)["norm_eps"]
        sizes = [(64, 64), (67, 45)]
    else:
        ref = random_timm_model(arch, num_classes=17, seed=1)
        model = convert(state_dict_numpy(ref), arch=arch, source=arch)
        sizes = _sizes(arch)
    for height, width in sizes:
        assert_matches_timm(model, ref, random_images(height, width), f"{arch} {height}x{width}")


def test_the_comparison_fails_a_wrong_model():
    """The shared comparison catches a bug that passes every shape check: a 7x7 kernel with H and W swapped
    in stage 1 leaves stage 0 equal and puts stages 1-3 and the logits far beyond the bar."""
    ref = random_timm_model("convnextv2_atto", num_classes=6, seed=7)
    model = convert(state_dict_numpy(ref))
    layer = model.get_layer("stages_1_blocks_0_conv_dw")
    layer.kernel.assign(np.transpose(keras.ops.convert_to_numpy(layer.kernel), (1, 0, 2, 3)))
    report = compare(model, ref, random_images(64, 64))
    assert [c.name for c in report.comparisons] == [*STAGE_NAMES, "logits"]
    assert not report.passed and report.lines()[-1].startswith("FAIL")
    first, *later = report.comparisons
    assert first.passed and first.relative <= 1e-5
    for comparison in later:
        assert not comparison.passed and comparison.relative > 1e-2, comparison.line()
    with pytest.raises(AssertionError, match="stage 1"):
        assert_matches_timm(model, ref, random_images(64, 64), "swapped kernel")
    with pytest.raises(AssertionError, match="max"):
        assert_close(np.float32([1.0, 2.0]), np.float32([1.0, 2.0001]), "off by 5e-5 relative")


@pytest.mark.parametrize("arch", ["convnext_atto", "convnextv2_atto", "convnext_zepto_rms_ols", "convnext_large_mlp"])
def test_round_trip_to_timm(arch):
    """timm -> Keras -> timm state dict loads with strict=True and gives identical outputs."""
    small = BACKEND != "tensorflow" and arch in SMALL_ON_OTHER_BACKENDS
    geometry = SMALL_GEOMETRY if small else {}
    ref = random_timm_model(arch, num_classes=5, seed=2, **geometry)
    exported = export_timm_state_dict(convert(state_dict_numpy(ref), arch=None if small else arch))
    back = timm.create_model(arch, num_classes=5, **geometry).eval()
    back.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    x = torch.from_numpy(random_images(64, 64)).permute(0, 3, 1, 2)
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
    model = convert(load_checkpoint(path), source=str(path))
    assert model.layers[-1].name == "head_fc"
    assert_matches_timm(model, ref, random_images(67, 45), f"official {arch}")


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_hugging_face_model(kind, tmp_path):
    """transformers ConvNext / ConvNextV2 saved with save_pretrained, compared with its own logits."""
    ref = random_hf_model(kind, depths=(2, 2, 6, 2), hidden_sizes=(40, 80, 160, 320), num_labels=9, seed=4)
    ref.save_pretrained(tmp_path)
    model = convert(load_checkpoint(tmp_path), source=str(tmp_path))
    assert model.architecture == ("convnext_atto" if kind == "v1" else "convnextv2_atto")
    x = random_images(67, 45)
    with torch.no_grad():
        out = ref(pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2), output_hidden_states=True)
    expected = [h.permute(0, 2, 3, 1).numpy() for h in out.hidden_states[1:]] + [out.logits.numpy()]
    actual = model.stage_and_output_model()(x, training=False)
    assert len(actual) == len(expected) == 5
    for name, a, e in zip([*STAGE_NAMES, "logits"], actual, expected):
        assert_close(keras.ops.convert_to_numpy(a), e, f"HF {kind} {name}")


def test_half_precision_file(tmp_path):
    """A bfloat16 safetensors file converts to the bfloat16-rounded timm model's outputs."""
    ref = random_timm_model("convnextv2_atto", num_classes=3, seed=5)
    path = tmp_path / "bf16.safetensors"
    save_safetensors(ref.state_dict(), path, dtype=torch.bfloat16)
    ref = ref.to(torch.bfloat16).float()  # the same rounding, compared in float32
    model = convert(load_checkpoint(path), source=str(path))
    assert_matches_timm(model, ref, random_images(64, 64), "bf16 file")
