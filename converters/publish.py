"""Publish the Keras conversion of a checkpoint to the Hugging Face Hub.

    python -m converters.publish NAME --repo-id ORG/REPO [--format keras|keras-hub] [--private]
                                  [--dry-run DIR] [--revision REV] [--debug]

NAME is anything `convnext_hub.load_pretrained` accepts; `--revision` pins
the source checkpoint's revision. `--format keras` (default) writes a
`convnext_hub.saved_folder` (`model.weights.h5` and `config.json`), which
`load_pretrained("hf://ORG/REPO")` loads back; `--format keras-hub` writes a
keras-hub preset, which `keras_hub.models.ImageClassifier.from_preset("hf://ORG/REPO")`
loads once `convnext_hub.keras_hub` is imported. Both come with a model card
`README.md`. With `--dry-run DIR` it is written to DIR and nothing is uploaded;
otherwise the repo is created (if needed) and the folder uploaded.

When torch and timm are importable, the card states the comparison with timm
(`convnext_hub.convert.verification`: every stage map and the logits, with the source
weights, on a fixed random input); publishing is refused if it fails.
"""

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import huggingface_hub

from . import cli

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
CARD_TAGS = ("image-classification", "convnext", "keras")


def _timm_available():
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def write_folder(name, folder, *, fmt="keras", revision=None, cache_dir=None, token=None, repo_id=None):
    """Writes checkpoint `name` into `folder` as `fmt` ("keras": a converted folder; "keras-hub": a
    keras-hub preset), with its model card; returns the equivalence report (None without timm)."""
    compare = _timm_available()
    cli.start_frameworks(need_timm=compare)
    if fmt == "keras-hub":
        _require_keras_hub()
    from convnext_hub import saved_folder
    from convnext_hub.convert.version import CONVERTER_VERSION
    from convnext_hub.hub import load_pretrained

    model = load_pretrained(name, revision=revision, cache_dir=cache_dir, token=token)
    report = measure_against_timm(model, token) if compare else None
    if report is not None and not report.passed:
        raise ValueError(
            f"{name}: refusing to publish: the Keras outputs differ from timm's: " + "; ".join(report.lines())
        )
    equivalence = report.as_dict() if report else None
    if fmt == "keras-hub":
        from convnext_hub.keras_hub import write_preset

        write_preset(model, folder, card={"equivalence": equivalence, "repo_id": repo_id})
        return report
    config = saved_folder.write(folder, model, converter_version=CONVERTER_VERSION, equivalence=equivalence)
    Path(folder, CARD_FILE).write_text(model_card(config, repo_id))
    return report


def _require_keras_hub():
    try:
        import keras_hub  # noqa: F401
    except ImportError:
        raise cli.MissingDependencyError(
            "--format keras-hub needs keras-hub: pip install 'convnext_hub[keras-hub]'"
        ) from None


def measure_against_timm(model, token=None):
    """`convnext_hub.convert.verification`'s report of `model` against timm with the source weights."""
    from convnext_hub.convert import layouts, verification
    from convnext_hub.convert.conversion import checkpoint_num_classes
    from convnext_hub.hub.sources import source_state_dict

    state_dict = layouts.to_timm_keys(source_state_dict(model.pretrained_cfg, token))
    reference, head_loaded = verification.timm_reference(model, state_dict, checkpoint_num_classes(state_dict))
    size = (model.pretrained_cfg or {}).get("input_size", [3, 224, 224])[1:]
    return verification.compare(model, reference, verification.random_images(*size), head_loaded=head_loaded)


def model_card(config, repo_id=None):
    """README.md with the Hub's YAML front matter, usage, preprocessing, equivalence and license."""
    from convnext_hub import model_card as model_card_parts  # imports Keras: after `cli.start_frameworks`

    cfg = config["pretrained_cfg"] or {}
    name = cfg.get("name") or config["architecture"] or "ConvNeXt"
    front = model_card_parts.front_matter(cfg, "keras", CARD_TAGS)
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
            "x".join(map(str, cfg.get("input_size", [])[1:])) or "-",
            cfg.get("crop_pct", "-"),
            cfg.get("crop_mode", "-"),
            cfg.get("interpolation", "-"),
            cfg.get("mean", "-"),
            cfg.get("std", "-"),
            f"{config['model_config']['num_classes']} ({cfg.get('label_set') or 'no ImageNet labels'})",
        ),
        "",
        "## Equivalence with timm",
        "",
        model_card_parts.equivalence_line(config.get("equivalence")),
        "",
        "## License",
        "",
        model_card_parts.license_line(cfg.get("license")),
        "",
    ]
    return "\n".join(front + [""] + body)


def publish(name, repo_id, *, fmt="keras", private=False, revision=None, dry_run=None, cache_dir=None, token=None):
    """Writes the folder for `name` and uploads it to `repo_id`; with `dry_run=DIR`, only writes DIR.

    Returns the folder written (dry run) or the URL of the upload commit.
    """
    kwargs = dict(fmt=fmt, revision=revision, cache_dir=cache_dir, token=token, repo_id=repo_id)
    if dry_run is not None:
        write_folder(name, dry_run, **kwargs)
        return str(dry_run)
    with tempfile.TemporaryDirectory(prefix="convnext_hub-publish-") as folder:
        write_folder(name, folder, **kwargs)
        if fmt == "keras-hub":
            from convnext_hub.keras_hub import upload_preset

            return upload_preset(
                folder, repo_id, private=private, token=token, commit_message=f"keras-hub preset of {name}"
            )
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
    parser.add_argument(
        "--format",
        choices=("keras", "keras-hub"),
        default="keras",
        help="a converted folder for load_pretrained (keras) or a keras-hub preset",
    )
    cli.add_common_arguments(parser)
    args = parser.parse_args(argv)
    cli.setup_logging()

    def command():
        where = publish(
            args.name, args.repo_id, fmt=args.format, private=args.private, revision=args.revision, dry_run=args.dry_run
        )
        print(f"{'wrote' if args.dry_run else 'published'} {args.name}: {where}")
        return 0

    return cli.run(command, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
