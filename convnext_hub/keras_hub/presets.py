"""keras-hub presets of ConvNeXt models: written with keras-hub's own saver, with a model card.

A preset folder holds keras-hub's file set (`config.json`, `metadata.json`,
`model.weights.h5`, and for a task `task.json`, `task.weights.h5`,
`preprocessor.json`, `image_converter.json`) plus `README.md`. keras-hub loads it
with `keras_hub.models.ImageClassifier.from_preset(folder_or_hf_uri)` once
`convnext_hub.keras_hub` is imported.
"""

import json
import os
from pathlib import Path

import huggingface_hub
from keras_hub.models import Backbone, Task

from convnext_hub import model_card as card_parts

from .convnext_from_timm import from_model

CARD_FILE = "README.md"
REQUIRED_FILES = ("config.json", "metadata.json", CARD_FILE)
WEIGHTS_FILES = ("model.weights.h5", "model.weights.json")  # one file, or keras-hub's shard index


def write_preset(model_or_task, folder, *, card=None):
    """Writes the keras-hub preset of `model_or_task` into `folder`; returns the folder.

    Args:
        model_or_task: a keras-hub task or backbone (`ConvNeXtImageClassifier`,
            `ConvNeXtBackbone`), or a `convnext_hub.ConvNeXt` (a classifier preset
            when it ends in timm's head, else a backbone preset).
        folder: the preset directory (created if needed).
        card: the model card: None (written from the model's `pretrained_cfg`),
            a dict of `model_card` arguments (`equivalence`, `repo_id`), or the
            Markdown text itself.
    """
    obj = _keras_hub_object(model_or_task)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    obj.save_to_preset(os.fspath(folder))
    if not isinstance(card, str):
        card = model_card(obj, **(card or {}))
    (folder / CARD_FILE).write_text(card)
    return folder


def upload_preset(folder, repo_id, *, private=False, token=None, commit_message=None):
    """Uploads a preset folder to the Hugging Face Hub repo `repo_id` (created if needed); returns the commit URL.

    `keras_hub.upload_preset` is not used: on a repo without a README it
    replaces the folder's `README.md` by its own generic card (and deletes it
    afterwards), which would drop the license and equivalence statement.
    """
    folder = Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHTS_FILES):
        missing.append(" or ".join(WEIGHTS_FILES))
    if missing:
        raise ValueError(
            f"`folder` is not a keras-hub preset written by write_preset: it lacks {missing}. "
            f"Received: folder={os.fspath(folder)!r}"
        )
    api = huggingface_hub.HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=folder, commit_message=commit_message or f"keras-hub preset {folder.name}"
    )
    return commit.commit_url


def model_card(model_or_task, *, equivalence=None, repo_id=None):
    """README.md: the Hub's YAML front matter, the keras-hub calls, preprocessing, equivalence, license.

    Args:
        model_or_task: the keras-hub task or backbone of the preset.
        equivalence: the comparison with timm with the same weights
            (`convnext_hub.convert.verification.Report.as_dict()`); None: not measured.
        repo_id: the Hub repo the preset goes to, for the usage snippet.
    """
    backbone = model_or_task if isinstance(model_or_task, Backbone) else model_or_task.backbone
    cfg = backbone.pretrained_cfg or {}
    name = cfg.get("name") or backbone.architecture or "ConvNeXt"
    is_task = isinstance(model_or_task, Task)
    uri = f"hf://{repo_id or '<org>/<repo>'}"
    body = [
        f"# {name} for keras-hub",
        "",
        f"{_source_sentence(cfg, backbone)} A keras-hub preset: the same layers and weights run on the "
        "TensorFlow, JAX and PyTorch backends of Keras 3.",
        "",
        "```python",
        "import keras_hub",
        "import convnext_hub.keras_hub  # registers the ConvNeXt classes with keras-hub",
        "",
        *(
            [
                f'classifier = keras_hub.models.ImageClassifier.from_preset("{uri}")',
                "classifier.predict(images)  # 0..255 images, any size (one per batch): "
                "timm's eval transform is built in",
                f'finetune = keras_hub.models.ImageClassifier.from_preset("{uri}", num_classes=10)  # fresh head',
            ]
            if is_task
            else []
        ),
        f'backbone = keras_hub.models.Backbone.from_preset("{uri}")  # backbone.pyramid_outputs: P2 ... P5',
        "```",
        "",
        *_preprocessing_lines(model_or_task, is_task),
        "## Equivalence with timm",
        "",
        card_parts.equivalence_line(equivalence),
        "",
        "## License",
        "",
        card_parts.license_line(cfg.get("license")),
        "",
    ]
    return "\n".join(_front_matter(cfg, is_task) + [""] + body)


def _keras_hub_object(model_or_task):
    if isinstance(model_or_task, (Backbone, Task)):
        return model_or_task
    ends_in_head = model_or_task.include_top and not model_or_task.features_only and model_or_task.num_classes
    return from_model(model_or_task, "classifier" if ends_in_head else "backbone")


def _front_matter(cfg, is_task):
    return card_parts.front_matter(
        cfg, "keras-hub", ("convnext", "keras-hub", "keras"), "image-classification" if is_task else None
    )


def _source_sentence(cfg, backbone):
    architecture = backbone.architecture or "custom-geometry ConvNeXt"
    if cfg.get("hf_hub_id"):
        hub_id = cfg["hf_hub_id"]
        return f"The {architecture} weights of [{hub_id}](https://huggingface.co/{hub_id}), converted by convnext_hub."
    return f"A {architecture} converted by convnext_hub."


def _preprocessing_lines(task, is_task):
    converter = getattr(task.preprocessor, "image_converter", None) if is_task else None
    if converter is None:
        return []
    config = converter.get_config()
    fields = ("image_size", "crop_pct", "crop_mode", "interpolation", "scale", "offset")
    return [
        "## Preprocessing",
        "",
        "The preset's `ConvNeXtImageConverter` applies timm's evaluation transform: resize to "
        "`image_size / crop_pct`, center crop `image_size`, `x * scale + offset` (`scale = 1 / (255 * std)`, "
        "`offset = -mean / std`).",
        "",
        "| " + " | ".join(fields) + " |",
        "| " + " | ".join("---" for _ in fields) + " |",
        "| " + " | ".join(json.dumps(config.get(f)) for f in fields) + " |",
        "",
    ]
