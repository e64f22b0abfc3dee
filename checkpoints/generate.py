"""Regenerate registry.json and labels/*.txt from the installed timm.

Run from the repository root: `python -m checkpoints.generate`.
"""

import json
from pathlib import Path

import timm
from timm.data import ImageNetInfo, infer_imagenet_subset
from timm.models import get_pretrained_cfg, is_model_pretrained, split_model_name_tag

from . import LABEL_SETS

PACKAGE_DIR = Path(__file__).resolve().parent
REGISTRY_PATH = PACKAGE_DIR / "registry.json"
LABELS_DIR = PACKAGE_DIR / "labels"
TIMM_PATTERN = "convnext*"
V1_SIZES = ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge", "xxlarge")
V2_SIZES = ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "huge")


def checkpoint_entry(name: str) -> dict:
    """Registry entry for one timm tag, read from its pretrained cfg."""
    cfg = get_pretrained_cfg(name)
    architecture, tag = split_model_name_tag(name)
    return {
        "name": name,
        "architecture": architecture,
        "tag": tag,
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
        "label_set": label_set_of(cfg),
        "is_default": default_tag(architecture) == tag,
    }


def label_set_of(cfg) -> str | None:
    """The label set a classifier predicts, None when headless or not ImageNet."""
    subset = infer_imagenet_subset(cfg)
    return subset if subset in LABEL_SETS else None


def default_tag(architecture: str) -> str:
    """The tag timm loads for `create_model(architecture, pretrained=True)`."""
    return get_pretrained_cfg(architecture).tag


def build_aliases(architectures: list[str]) -> dict[str, str]:
    """Bare architecture names and convnext_v1_/convnext_v2_ sizes -> default timm tag."""
    candidates = {arch: arch for arch in architectures}
    candidates.update({f"convnext_v1_{size}": f"convnext_{size}" for size in V1_SIZES})
    candidates.update({f"convnext_v2_{size}": f"convnextv2_{size}" for size in V2_SIZES})
    return {alias: f"{arch}.{default_tag(arch)}" for alias, arch in candidates.items() if is_model_pretrained(arch)}


def build_registry() -> dict:
    """The whole registry.json content."""
    names = timm.list_pretrained(TIMM_PATTERN)
    architectures = sorted({split_model_name_tag(name)[0] for name in names})
    return {
        "timm_version": timm.__version__,
        "checkpoints": {name: checkpoint_entry(name) for name in names},
        "aliases": build_aliases(architectures),
    }


def short_label_names(label_set: str) -> list[str]:
    """First WordNet lemma of every class of `label_set`, e.g. "tench"."""
    descriptions = ImageNetInfo(label_set).label_descriptions()
    return [description.split(",")[0].strip() for description in descriptions]


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text with Unix newlines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")


def main() -> None:
    registry = build_registry()
    write_text(REGISTRY_PATH, json.dumps(registry, indent=1, sort_keys=True) + "\n")
    for label_set in LABEL_SETS:
        write_text(LABELS_DIR / f"{label_set}.txt", "\n".join(short_label_names(label_set)) + "\n")
    print(f"Wrote {len(registry['checkpoints'])} checkpoints and {len(registry['aliases'])} aliases to {REGISTRY_PATH}")


if __name__ == "__main__":
    main()
