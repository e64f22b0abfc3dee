"""convnext_hub.convert.layouts: official / HF / open_clip keys -> timm keys, and architecture inference."""

import logging

import numpy as np
import pytest
import timm
import torch
from timm.models.convnext import checkpoint_filter_fn

from converters import (
    ArchitectureError,
    KeyMismatchError,
    ShapeMismatchError,
    detect_layout,
    infer_architecture,
    to_timm_keys,
)
from convnext_hub.convert.layouts import check_architecture
from tests import checkpoint_factory as cf

TIMM_ARCHS = timm.list_models("convnext*")


@pytest.fixture(scope="module")
def atto():
    return cf.random_timm_model("convnext_atto", num_classes=10)


@pytest.fixture(scope="module")
def v2_atto():
    return cf.random_timm_model("convnextv2_atto", num_classes=10)


def assert_same_tensors(got, expected):
    """Same keys; same values, up to the rank of fc1 / fc2 (2-D Linear vs 4-D 1x1 conv)."""
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        got_value = np.asarray(got[key])
        if ".mlp.fc" in key:
            assert got_value.size == value.size, key
            got_value = got_value.reshape(value.shape)
        assert got_value.shape == value.shape, key
        np.testing.assert_array_equal(got_value, value, err_msg=key)


def meta_shapes(arch, **kwargs):
    """Shapes-only timm state dict (broadcast zeros: nothing allocated)."""
    with torch.device("meta"):
        model = timm.create_model(arch, **kwargs)
    return {k: np.broadcast_to(np.zeros((), np.float32), v.shape) for k, v in model.state_dict().items()}


# --- official layout -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["convnext_atto", "convnextv2_atto"])
def test_timm_to_official_inverts_timm_filter(arch, request):
    model = request.getfixturevalue({"convnext_atto": "atto", "convnextv2_atto": "v2_atto"}[arch])
    official = {k: torch.from_numpy(v) for k, v in cf.timm_to_official(cf.state_dict_numpy(model)).items()}
    back = checkpoint_filter_fn({"model": official}, model)
    assert_same_tensors({k: v.numpy() for k, v in back.items()}, cf.state_dict_numpy(model))


@pytest.mark.parametrize("pwconv_ndim", [2, 4])
@pytest.mark.parametrize("arch", ["convnext_atto", "convnextv2_atto"])
def test_official_to_timm(arch, pwconv_ndim, request):
    sd = cf.state_dict_numpy(request.getfixturevalue({"convnext_atto": "atto", "convnextv2_atto": "v2_atto"}[arch]))
    official = cf.timm_to_official(sd, pwconv_ndim=pwconv_ndim)
    assert detect_layout(official) == "official"
    assert any(k.endswith(".grn.gamma") for k in official) == (arch == "convnextv2_atto")
    timm_sd = to_timm_keys(official)
    assert_same_tensors(timm_sd, sd)
    fc1 = timm_sd["stages.0.blocks.0.mlp.fc1.weight"]
    assert fc1.ndim == pwconv_ndim  # kept as it came
    if arch == "convnextv2_atto":
        assert timm_sd["stages.0.blocks.0.mlp.grn.weight"].shape == (160,)
    info = infer_architecture(timm_sd)
    assert info["arch"] == arch and info["conv_mlp"] == (pwconv_ndim == 4)


def test_official_eupe_extras_dropped_and_logged(atto, caplog):
    official = cf.timm_to_official(cf.state_dict_numpy(atto))
    official["projectors.0.weight"] = np.zeros((4, 320), np.float32)
    official["norms.3.weight"] = np.ones(320, np.float32)
    with caplog.at_level(logging.INFO, logger="converters"):
        timm_sd = to_timm_keys(official, source="eupe.pth")
    assert_same_tensors(timm_sd, cf.state_dict_numpy(atto))
    assert "eupe.pth: dropped 2 official keys" in caplog.text and "projectors.0.weight" in caplog.text


def test_bad_grn_shape_refused(v2_atto):
    official = cf.timm_to_official(cf.state_dict_numpy(v2_atto))
    official["stages.0.0.grn.gamma"] = np.zeros((1, 2, 1, 80), np.float32)
    with pytest.raises(ShapeMismatchError, match=r"x.pt: 'stages.0.0.grn.gamma' has shape \(1, 2, 1, 80\)"):
        to_timm_keys(official, source="x.pt")


# --- Hugging Face transformers layout ------------------------------------------------------------


@pytest.mark.parametrize("kind, arch", [("v1", "convnext_atto"), ("v2", "convnextv2_atto")])
def test_hf_to_timm_matches_timm_model(kind, arch):
    hf = cf.random_hf_model(kind, num_labels=10)
    hf_sd = cf.state_dict_numpy(hf)
    assert detect_layout(hf_sd) == "hf"
    timm_sd = to_timm_keys(hf_sd, source="hf")

    timm_model = timm.create_model(arch, num_classes=10).eval()
    expected = timm_model.state_dict()
    assert sorted(timm_sd) == sorted(expected)
    for key, value in expected.items():
        assert timm_sd[key].size == value.numel(), key
        if ".mlp.fc" not in key:
            assert timm_sd[key].shape == tuple(value.shape), key
    assert infer_architecture(timm_sd)["arch"] == arch

    # The renaming is right if timm computes what transformers computes.
    timm_model.load_state_dict({k: torch.from_numpy(v).reshape(expected[k].shape) for k, v in timm_sd.items()})
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(pixel_values=x).logits
        got = timm_model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_hf_base_model_and_backbone_keys(kind, caplog):
    hf = cf.random_hf_model(kind)
    base = cf.state_dict_numpy(hf.base_model)  # ConvNextModel: no prefix, no classifier
    assert "embeddings.patch_embeddings.weight" in base
    base["hidden_states_norms.stage1.weight"] = np.ones(40, np.float32)  # ConvNextBackbone's norms
    with caplog.at_level(logging.INFO, logger="converters"):
        timm_sd = to_timm_keys(base)
    assert "hidden_states_norms.stage1.weight" in caplog.text
    info = infer_architecture(timm_sd)
    assert info["num_classes"] == 0 and info["arch"] == {"v1": "convnext_atto", "v2": "convnextv2_atto"}[kind]


# --- open_clip layout ----------------------------------------------------------------------------


def test_clip_to_timm(atto, caplog):
    sd = cf.state_dict_numpy(atto)
    clip = cf.timm_to_clip(sd)
    assert detect_layout(clip) == "clip"
    with caplog.at_level(logging.INFO, logger="converters"):
        timm_sd = to_timm_keys(clip, source="open_clip_model.safetensors")
    assert "logit_scale" in caplog.text
    assert_same_tensors(timm_sd, {**sd, "head.fc.bias": np.zeros(10, np.float32)})


def test_clip_mlp_head_to_timm():
    sd = cf.state_dict_numpy(cf.random_timm_model("convnext_atto", num_classes=12, head_hidden_size=64))
    clip = {"visual.trunk." + k: v for k, v in sd.items() if not k.startswith(("head.fc.", "head.pre_logits."))}
    clip["visual.head.mlp.fc1.weight"] = sd["head.pre_logits.fc.weight"]
    clip["visual.head.mlp.fc1.bias"] = sd["head.pre_logits.fc.bias"]
    clip["visual.head.mlp.fc2.weight"] = sd["head.fc.weight"]
    timm_sd = to_timm_keys(clip)
    assert_same_tensors(timm_sd, {**sd, "head.fc.bias": np.zeros(12, np.float32)})
    assert infer_architecture(timm_sd)["head_hidden_size"] == 64


# --- detection -----------------------------------------------------------------------------------


def test_mixed_layouts_refused(atto):
    sd = cf.state_dict_numpy(atto)
    mixed = {**sd, "downsample_layers.1.0.weight": np.zeros(40, np.float32)}
    expected = r"m.pth: .*'stem.0.weight' \(timm\).*'downsample_layers.1.0.weight' \(official\)"
    with pytest.raises(KeyMismatchError, match=expected):
        to_timm_keys(mixed, source="m.pth")
    with pytest.raises(KeyMismatchError, match=r"\(hf\)"):
        detect_layout({**sd, "classifier.weight": np.zeros((2, 320))})
    with pytest.raises(KeyMismatchError, match=r"no ConvNeXt keys.*'fc.weight'"):
        detect_layout({"fc.weight": np.zeros(2)})


def test_timm_layout_passes_through(v2_atto):
    sd = cf.state_dict_numpy(v2_atto)
    assert detect_layout(sd) == "timm"
    assert_same_tensors(to_timm_keys(sd), sd)


# --- architecture --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", TIMM_ARCHS)
def test_infer_every_timm_architecture(arch):
    assert len(TIMM_ARCHS) == 28
    for num_classes in (1000, 0):
        info = infer_architecture(meta_shapes(arch, num_classes=num_classes))
        assert info["arch"] == arch and info["num_classes"] == num_classes
        assert check_architecture(meta_shapes(arch, num_classes=num_classes), arch)["arch"] == arch
    model_args = _timm_args(arch)
    assert info["depths"] == list(model_args["depths"]) and info["dims"] == list(model_args["dims"])
    assert info["use_grn"] == model_args.get("use_grn", False)
    assert info["layer_scale"] == ("ls_init_value" not in model_args)
    assert info["stem_type"] == model_args.get("stem_type", "patch")
    assert (
        info["norm"]
        == {None: "layernorm", "rmsnorm2d": "rmsnorm2d", "simplenorm": "simplenorm"}[model_args.get("norm_layer")]
    )
    assert info["conv_mlp"] == model_args.get("conv_mlp", False)
    assert info["head_norm_first"] == model_args.get("head_norm_first", False)
    assert info["head_hidden_size"] == model_args.get("head_hidden_size")


def _timm_args(arch):
    """The `model_args` of timm's model function for `arch`, captured by intercepting `_create_convnext`."""
    import timm.models.convnext as tc

    captured = {}
    original = tc._create_convnext
    tc._create_convnext = lambda variant, pretrained=False, **kwargs: captured.update(kwargs)
    try:
        getattr(tc, arch)()
    finally:
        tc._create_convnext = original
    return captured


def test_headless_checkpoint_infers_arch(atto):
    sd = {k: v for k, v in cf.state_dict_numpy(atto).items() if not k.startswith("head.")}  # like fcmae weights
    info = infer_architecture(sd)
    assert info["arch"] == "convnext_atto" and info["num_classes"] == 0 and not info["head_norm_first"]


def test_unknown_architecture_gives_none():
    sd = meta_shapes("convnext_atto", depths=(2, 2, 2, 2))
    info = infer_architecture(sd)
    assert info["arch"] is None and info["depths"] == [2, 2, 2, 2] and info["norm"] == "layernorm"
    sd = meta_shapes("convnext_atto", depths=(2, 2, 2, 2), norm_layer="rmsnorm2d")
    assert infer_architecture(sd)["norm"] is None  # rmsnorm2d / simplenorm: not told apart without an arch


def test_check_architecture_messages():
    atto = meta_shapes("convnext_atto")
    with pytest.raises(ArchitectureError) as info:
        check_architecture(atto, "convnext_tiny", source="atto.safetensors")
    message = str(info.value)
    assert message.startswith("atto.safetensors: the checkpoint does not fit convnext_tiny: ")
    assert "depths: checkpoint has [2, 2, 6, 2], convnext_tiny expects [3, 3, 9, 3]" in message
    assert "dims: checkpoint has [40, 80, 160, 320], convnext_tiny expects [96, 192, 384, 768]" in message
    with pytest.raises(ArchitectureError, match="norm: checkpoint has layernorm, convnext_atto_rms expects rmsnorm2d"):
        check_architecture(atto, "convnext_atto_rms")
    with pytest.raises(ArchitectureError, match="norm: checkpoint has rmsnorm2d, convnext_atto expects layernorm"):
        check_architecture(meta_shapes("convnext_atto_rms"), "convnext_atto")  # the shapes fit atto_rms only
    custom_rms = meta_shapes("convnext_atto", depths=(2, 2, 2, 2), norm_layer="rmsnorm2d")
    with pytest.raises(ArchitectureError, match="norm: checkpoint has a bias-free norm, convnext_atto expects"):
        check_architecture(custom_rms, "convnext_atto")
    with pytest.raises(ArchitectureError, match="use_grn: checkpoint has False, convnextv2_atto expects True"):
        check_architecture(atto, "convnextv2_atto")
    with pytest.raises(ArchitectureError, match="stem_type: checkpoint has patch, convnext_atto_ols expects overlap_t"):
        check_architecture(atto, "convnext_atto_ols")
    with pytest.raises(ArchitectureError, match="unknown architecture 'convnext_mega'"):
        check_architecture(atto, "convnext_mega")
    with pytest.raises(ArchitectureError, match="cannot infer the architecture: stage 3 has blocks"):
        infer_architecture({k: v for k, v in atto.items() if not k.startswith("stages.3.")})
