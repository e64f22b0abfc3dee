"""`load_pretrained`: a Keras ConvNeXt with pretrained weights, by name, Hub repo or file."""
import logging
import os

import checkpoints

from ..families import create_model
from ..model import zeros_initialized
from . import sources, timm_hub
from .cache import Cache

logger = logging.getLogger(__name__)

NON_COMMERCIAL_LICENSES = ("cc-by-nc-4.0", "dinov3-license", "fair-noncommercial-research-license")


def load_pretrained(
    name,
    *,
    num_classes=None,
    input_shape=None,
    include_top=True,
    features_only=False,
    out_indices=(0, 1, 2, 3),
    pooling=None,
    drop_path_rate=0.0,
    dropout_rate=0.0,
    classifier_activation=None,
    dtype=None,
    revision=None,
    cache_dir=None,
    local_files_only=False,
    token=None,
):
    """Builds a ConvNeXt and loads pretrained weights into it.

    Args:
        name: a timm tag (`"convnextv2_base.fcmae_ft_in22k_in1k"`), an alias
            (`"convnext_v2_base"`) or architecture (`"convnext_tiny"`, its default tag);
            `"hf://org/repo"` for a Keras conversion published by `converters.publish`;
            or a local checkpoint file / folder (safetensors, PyTorch pickle, HF folder,
            `.keras`, published folder or `.weights.h5` with its `config.json`).
        num_classes: classifier outputs; defaults to the checkpoint's. Another value
            keeps the backbone and leaves a fresh classifier (logged); 0 drops it.
        input_shape: (height, width, 3); None or sides of None for any size.
        include_top, features_only, out_indices, pooling, drop_path_rate, dropout_rate,
            classifier_activation, dtype: as for `convnext_hub.create_model`.
        revision: branch, tag or commit of the Hub repo (default "main").
        cache_dir: converted-weights cache; default `$CONVNEXT_HUB_CACHE` or
            `~/.cache/convnext_hub`. Sources are downloaded into huggingface_hub's cache.
        local_files_only: use only the caches (as with `HF_HUB_OFFLINE=1`).
        token: Hugging Face token for private or gated repos.

    Returns:
        A `ConvNeXt` whose `pretrained_cfg` holds the checkpoint's registry entry
        (preprocessing, license, ...) and its `source`.

    Raises:
        checkpoints.UnknownCheckpointError: `name` is no known checkpoint nor an existing path.
        WeightsUnavailableError: offline / Hub unreachable and the weights are in no cache.
        CacheNotWritableError: the cache directory cannot be written.
        converters.ConversionError: the checkpoint does not fit the architecture.
    """
    weights = _weights(name, revision, cache_dir, local_files_only, token)
    model_kwargs = dict(
        num_classes=weights.num_classes if num_classes is None else num_classes,
        include_top=include_top,
        features_only=features_only,
        out_indices=tuple(out_indices),
        pooling=pooling,
        drop_path_rate=drop_path_rate,
        dropout_rate=dropout_rate,
        classifier_activation=classifier_activation,
        dtype=dtype,
    )
    if input_shape is not None:
        model_kwargs["input_shape"] = tuple(input_shape)
    with zeros_initialized():  # every weight is loaded next, or re-initialised if left fresh
        model = create_model(weights.architecture, **model_kwargs)
    model = weights.load_into(model)
    model.pretrained_cfg = weights.pretrained_cfg
    _state_license(weights.pretrained_cfg)
    _note_input_size(weights.pretrained_cfg, input_shape)
    return model


def _weights(name, revision, cache_dir, local_files_only, token):
    """Dispatch on the kind of `name`; registry names win over same-named local paths."""
    if isinstance(name, str) and name.startswith("hf://"):
        return sources.from_keras_repo(name[len("hf://"):], Cache(cache_dir), revision, token, local_files_only)
    if not isinstance(name, os.PathLike):
        try:
            entry = checkpoints.resolve(name)
        except checkpoints.UnknownCheckpointError:
            if not os.path.exists(name):
                raise
        else:
            return timm_hub.from_registry(entry, Cache(cache_dir), revision, token, local_files_only)
    if revision is not None:
        raise ValueError(f"`revision` applies to Hub checkpoints only. Received: name={name!r}, revision={revision!r}")
    return sources.from_local(name)


def _state_license(cfg):
    license_name = cfg.get("license")
    if license_name is None:
        return
    name = cfg.get("name") or cfg.get("architecture")
    if license_name in NON_COMMERCIAL_LICENSES:
        logger.warning("%s: the weights are licensed %s: non-commercial use only.", name, license_name)
    else:
        logger.info("%s: the weights are licensed %s.", name, license_name)


def _note_input_size(cfg, input_shape):
    trained = cfg.get("input_size")
    if input_shape is None or trained is None or tuple(input_shape[:2]) == tuple(trained[1:]):
        return
    logger.info(
        "%s was trained at %dx%d (test size %s); building it for %s. ConvNeXt accepts any size, but accuracy "
        "at another size may need fine-tuning.",
        cfg.get("name"), trained[1], trained[2],
        "x".join(map(str, cfg["test_input_size"][1:])) if cfg.get("test_input_size") else "the same",
        "x".join(str(s) for s in input_shape[:2]),
    )
