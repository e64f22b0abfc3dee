"""Publish the Keras conversion of a checkpoint to the Hugging Face Hub.

    python -m converters.publish NAME --repo-id ORG/REPO [--private] [--dry-run DIR] [--revision REV]

NAME is anything `convnext_hub.hub.load_pretrained` accepts; `--revision` pins
the source checkpoint's revision. The folder written holds `model.weights.h5`
(Keras `save_weights`), `config.json` (architecture, model config, pretrained
cfg) and a model card `README.md`. With `--dry-run DIR` it is written to DIR and
nothing is uploaded; otherwise the repo is created (if needed) and the folder
uploaded. `load_pretrained("hf://ORG/REPO")` loads it back.

When torch and timm are importable, the card states the largest difference
between the Keras logits and timm's, both run with the source weights on a
fixed random input; publishing is refused if it is above `MAX_RELATIVE_DELTA`.
"""
import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from .version import CONVERTER_VERSION

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.weights.h5"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
CARD_TAGS = ("image-classification", "convnext", "keras")
HF_LICENSE_IDS = ("apache-2.0", "mit", "cc-by-4.0", "cc-by-nc-4.0", "bsd-3-clause")  # others: `license: other`
MAX_RELATIVE_DELTA = 1e-4
DELTA_BATCH = 2


def _torch_first():
    """Import torch and timm before Keras / TensorFlow (the other order crashes some machines); None if absent."""
    try:
        import timm
        import torch
    except ImportError:
        return None
    return torch, timm


def write_folder(name, folder, *, revision=None, cache_dir=None, token=None, repo_id=None):
    """Writes the weights, config.json and README.md for checkpoint `name` into `folder`; returns the config."""
    frameworks = _torch_first()
    import convnext_hub
    from convnext_hub.hub import load_pretrained

    model = load_pretrained(name, revision=revision, cache_dir=cache_dir, token=token)
    delta = measure_against_timm(model, frameworks, token)
    if delta and delta["max_abs_diff"] > MAX_RELATIVE_DELTA * delta["max_abs_ref"]:
        raise ValueError(
            f"{name}: refusing to publish: the Keras logits differ from timm's by up to {delta['max_abs_diff']:.3g} "
            f"(max |logit| {delta['max_abs_ref']:.3g}), more than {MAX_RELATIVE_DELTA:g} relative"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_weights(folder / WEIGHTS_FILE)
    config = {
        "convnext_hub_version": convnext_hub.__version__,
        "converter_version": CONVERTER_VERSION,
        "architecture": model.architecture,
        "model_config": model.get_config(),
        "pretrained_cfg": model.pretrained_cfg,
        "equivalence": delta,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (folder / CARD_FILE).write_text(model_card(config, repo_id))
    return config


def measure_against_timm(model, frameworks, token=None):
    """max|Δ| of `model`'s logits against timm's with the source weights, or None if not measurable."""
    cfg = model.pretrained_cfg or {}
    source = cfg.get("source", {})
    if frameworks is None or not model.include_top or not ("path" in source or "filename" in source):
        return None
    torch, timm = frameworks
    import keras
    import numpy as np
    from timm.models.convnext import checkpoint_filter_fn

    from .readers import load_checkpoint

    path = source.get("path")
    if path is None:
        import huggingface_hub

        path = huggingface_hub.hf_hub_download(
            source["repo_id"], source["filename"], revision=source["revision"], token=token)
    state_dict = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in load_checkpoint(path).items()}
    reference = timm.create_model(model.architecture, pretrained=False, num_classes=model.num_classes).eval()
    reference.load_state_dict(checkpoint_filter_fn(state_dict, reference))
    size = cfg.get("input_size", [3, 224, 224])[1:]
    images = np.random.default_rng(0).standard_normal((DELTA_BATCH, *size, 3)).astype("float32")
    with torch.no_grad():
        expected = reference(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    actual = keras.ops.convert_to_numpy(model(images, training=False))
    return {
        "max_abs_diff": float(np.abs(actual - expected).max()),
        "max_abs_ref": float(np.abs(expected).max()),
        "input_shape": [DELTA_BATCH, *size, 3],
        "timm_version": timm.__version__,
        "keras_backend": keras.backend.backend(),
    }


def model_card(config, repo_id=None):
    """README.md with the Hub's YAML front matter, usage, preprocessing, equivalence and license."""
    cfg = config["pretrained_cfg"] or {}
    name = cfg.get("name") or config["architecture"]
    license_name = cfg.get("license")
    front = ["---", "library_name: keras"]
    if cfg.get("hf_hub_id"):
        front.append(f"base_model: {cfg['hf_hub_id']}")
    if license_name in HF_LICENSE_IDS:
        front.append(f"license: {license_name}")
    elif license_name:
        front += ["license: other", f"license_name: {license_name}"]
    front += ["pipeline_tag: image-classification", "tags:", *(f"- {tag}" for tag in CARD_TAGS), "---"]
    source = f"[{cfg['hf_hub_id']}](https://huggingface.co/{cfg['hf_hub_id']})" if cfg.get("hf_hub_id") else name
    body = [
        f"# {name} for Keras 3",
        "",
        f"The {config['architecture']} weights of {source}, converted to a native Keras 3 model by convnext_hub "
        f"{config['convnext_hub_version']} (converter version {config['converter_version']}).",
        "",
        "```python",
        "from convnext_hub.hub import load_pretrained",
        "",
        f'model = load_pretrained("hf://{repo_id or "<org>/<repo>"}")  # num_classes=..., input_shape=... to fine-tune',
        "```",
        "",
        "## Preprocessing",
        "",
        "| input size | crop_pct | crop_mode | interpolation | mean | std | classes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        "| {} | {} | {} | {} | {} | {} | {} |".format(
            "x".join(map(str, cfg.get("input_size", [])[1:])) or "-", cfg.get("crop_pct", "-"),
            cfg.get("crop_mode", "-"), cfg.get("interpolation", "-"), cfg.get("mean", "-"), cfg.get("std", "-"),
            f"{config['model_config']['num_classes']} ({cfg.get('label_set') or 'no ImageNet labels'})",
        ),
        "",
        "## Equivalence with timm",
        "",
        _delta_line(config["equivalence"]),
        "",
        "## License",
        "",
        _license_line(license_name),
        "",
    ]
    return "\n".join(front + [""] + body)


def _delta_line(delta):
    if not delta:
        return "Not measured (torch and timm were not installed where this conversion was published)."
    return (
        f"Max |Δ| of the logits against timm {delta['timm_version']} with the same source weights, on a fixed random "
        f"{'x'.join(map(str, delta['input_shape']))} float32 input on CPU (Keras backend {delta['keras_backend']}): "
        f"{delta['max_abs_diff']:.3g} (max |logit| {delta['max_abs_ref']:.3g}, relative "
        f"{delta['max_abs_diff'] / max(delta['max_abs_ref'], 1e-30):.2g})."
    )


def _license_line(license_name):
    from convnext_hub.hub.loader import NON_COMMERCIAL_LICENSES

    if not license_name:
        return "The license of the source weights is not known: check it before use."
    note = " It allows non-commercial use only." if license_name in NON_COMMERCIAL_LICENSES else ""
    return f"The weights keep the license of the source checkpoint: {license_name}.{note}"


def publish(name, repo_id, *, private=False, revision=None, dry_run=None, cache_dir=None, token=None):
    """Writes the folder for `name` and uploads it to `repo_id`; with `dry_run=DIR`, only writes DIR.

    Returns the folder written (dry run) or the URL of the upload commit.
    """
    if dry_run is not None:
        write_folder(name, dry_run, revision=revision, cache_dir=cache_dir, token=token, repo_id=repo_id)
        return str(dry_run)
    import huggingface_hub

    with tempfile.TemporaryDirectory(prefix="convnext_hub-publish-") as folder:
        write_folder(name, folder, revision=revision, cache_dir=cache_dir, token=token, repo_id=repo_id)
        api = huggingface_hub.HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=f"Keras conversion of {name}")
    return commit.commit_url


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m converters.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="checkpoint: timm tag, alias, architecture, or local file")
    parser.add_argument("--repo-id", required=True, help="target Hub repo, ORG/REPO")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--dry-run", metavar="DIR", help="write the folder to DIR and upload nothing")
    parser.add_argument("--revision", help="revision of the source checkpoint (default: main)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        where = publish(args.name, args.repo_id, private=args.private, revision=args.revision, dry_run=args.dry_run)
    except (ValueError, OSError) as e:  # unknown name, bad checkpoint, no network, unwritable cache / folder
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{'wrote' if args.dry_run else 'published'} {args.name}: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
