"""The checkpoint registry agrees with timm, and decode_predictions reads it right."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
from timm.data import ImageNetInfo, infer_imagenet_subset
from timm.models import get_pretrained_cfg, is_model_pretrained, resolve_pretrained_cfg

import checkpoints
from checkpoints import generate
from convnext_hub.labels import decode_predictions

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMM_TAGS = timm.list_pretrained("convnext*")
ARCHITECTURES = sorted({tag.split(".")[0] for tag in TIMM_TAGS})
LABEL_SET_SIZES = {"imagenet-1k": 1000, "imagenet-12k": 11821, "imagenet-22k": 21841}


def timm_default_tag(architecture):
    """The tag timm.create_model(architecture, pretrained=True) loads (no download)."""
    return resolve_pretrained_cfg(architecture).tag


def test_registry_lists_exactly_timm_pretrained():
    assert checkpoints.list_pretrained() == sorted(TIMM_TAGS)


def test_registry_json_matches_regeneration():
    committed = json.loads((REPO_ROOT / "checkpoints" / "registry.json").read_text())
    regenerated = generate.build_registry()
    assert committed["checkpoints"] == regenerated["checkpoints"]
    assert committed["aliases"] == regenerated["aliases"]


@pytest.mark.parametrize("tag", TIMM_TAGS)
def test_entry_fields_match_timm_cfg(tag):
    cfg = get_pretrained_cfg(tag)
    subset = infer_imagenet_subset(cfg)
    expected = {
        "name": tag,
        "architecture": cfg.architecture,
        "tag": cfg.tag,
        "hf_hub_id": cfg.hf_hub_id,
        "num_classes": cfg.num_classes,
        "input_size": list(cfg.input_size),
        "test_input_size": list(cfg.test_input_size) if cfg.test_input_size else None,
        "crop_pct": cfg.crop_pct,
        "test_crop_pct": cfg.test_crop_pct,
        "crop_mode": cfg.crop_mode,
        "interpolation": cfg.interpolation,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "license": cfg.license,
        "label_set": subset if subset in checkpoints.LABEL_SETS else None,
        "is_default": timm_default_tag(cfg.architecture) == cfg.tag,
    }
    assert checkpoints.resolve(tag) == expected


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_bare_architecture_resolves_like_timm_create_model(architecture):
    entry = checkpoints.resolve(architecture)
    assert entry["name"] == f"{architecture}.{timm_default_tag(architecture)}"
    assert entry["is_default"]


def test_exactly_one_default_per_architecture():
    defaults = [tag for tag in TIMM_TAGS if checkpoints.resolve(tag)["is_default"]]
    assert sorted(tag.split(".")[0] for tag in defaults) == ARCHITECTURES


def test_every_alias_resolves_to_its_target():
    for alias, tag in checkpoints.aliases().items():
        assert checkpoints.resolve(alias)["name"] == tag


@pytest.mark.parametrize(
    ("prefix", "architecture_prefix", "sizes"),
    [
        ("convnext_v1_", "convnext_", generate.V1_SIZES),
        ("convnext_v2_", "convnextv2_", generate.V2_SIZES),
    ],
)
def test_version_aliases_cover_pretrained_sizes(prefix, architecture_prefix, sizes):
    aliases = checkpoints.aliases()
    for size in sizes:
        architecture = architecture_prefix + size
        if is_model_pretrained(architecture):
            assert aliases[prefix + size] == f"{architecture}.{timm_default_tag(architecture)}"
        else:
            assert prefix + size not in aliases


def test_resolve_returns_a_copy():
    checkpoints.resolve("convnext_tiny")["mean"].append(0.0)
    assert len(checkpoints.resolve("convnext_tiny")["mean"]) == 3


def test_unknown_name_suggests_close_matches():
    with pytest.raises(checkpoints.UnknownCheckpointError) as error:
        checkpoints.resolve("convnext_tiny_in1k")
    message = str(error.value)
    assert "'convnext_tiny_in1k'" in message
    assert "convnext_tiny.fb_in1k" in message
    assert isinstance(error.value, ValueError)


def test_list_pretrained_pattern_matches_tags_only():
    v2_tags = checkpoints.list_pretrained("convnextv2_*")
    assert v2_tags == sorted(timm.list_pretrained("convnextv2_*"))
    assert checkpoints.list_pretrained("*.fcmae") == [
        f"{architecture}.fcmae" for architecture in ARCHITECTURES if architecture.startswith("convnextv2_")
    ]
    assert checkpoints.list_pretrained("convnext_v2_*") == []


@pytest.mark.parametrize(("label_set", "size"), LABEL_SET_SIZES.items())
def test_label_files_match_timm_imagenet_info(label_set, size):
    descriptions = ImageNetInfo(label_set).label_descriptions()
    names = checkpoints.label_names(label_set)
    assert len(names) == len(descriptions) == size
    assert names == [description.split(",")[0].strip() for description in descriptions]


def test_label_sets_of_registry_are_known():
    label_sets = {checkpoints.resolve(tag)["label_set"] for tag in TIMM_TAGS}
    assert label_sets == {None, *checkpoints.LABEL_SETS}


def test_unknown_label_set_lists_accepted_ones():
    with pytest.raises(ValueError, match="imagenet-1k, imagenet-12k, imagenet-22k"):
        checkpoints.label_names("imagenet-21k")


def test_decode_predictions_ranks_by_softmax():
    logits = np.random.default_rng(0).normal(size=(2, 1000))
    logits[0, 207] = 10.0
    logits[1, 985] = 1e4  # huge logits must not overflow
    decoded = decode_predictions(logits, "convnext_v1_tiny", top=5)
    names = checkpoints.label_names("imagenet-1k")
    assert [sample[0][:2] for sample in decoded] == [(207, names[207]), (985, names[985])]
    for sample in decoded:
        probabilities = [probability for _, _, probability in sample]
        assert len(sample) == 5
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0.0 <= sum(probabilities) <= 1.0 + 1e-9
    expected = np.exp(logits[0] - logits[0].max())
    assert decoded[0][0][2] == pytest.approx(expected[207] / expected.sum())


def test_decode_predictions_accepts_label_set_name():
    logits = np.zeros((1, 11821), dtype=np.float32)
    logits[0, 42] = 1.0
    (sample,) = decode_predictions(logits, "imagenet-12k", top=1)
    assert sample == [(42, checkpoints.label_names("imagenet-12k")[42], pytest.approx(np.e / (np.e + 11820)))]


def test_decode_predictions_rejects_wrong_class_count():
    with pytest.raises(ValueError, match="11821"):
        decode_predictions(np.zeros((1, 1000)), "convnext_tiny.in12k")


def test_decode_predictions_rejects_headless_checkpoint():
    with pytest.raises(ValueError, match="no ImageNet classifier"):
        decode_predictions(np.zeros((1, 1000)), "convnextv2_base.fcmae")


def test_import_checkpoints_loads_no_ml_framework():
    code = (
        "import sys, checkpoints; "
        "checkpoints.resolve('convnext_tiny'); checkpoints.label_names('imagenet-1k'); "
        "print(sorted({'keras', 'numpy', 'torch', 'timm', 'tensorflow', 'jax'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
