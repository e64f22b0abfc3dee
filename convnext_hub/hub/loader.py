"""`load_pretrained`: a Keras ConvNeXt with pretrained weights, by name, Hub repo or file."""

import logging
import os

import checkpoints
from checkpoints import NON_COMMERCIAL_LICENSES

from ..arguments import check_keywords
from ..families import model_arguments
from . import sources, timm_hub
from .cache import Cache

logger = logging.getLogger(__name__)


CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".keras", ".h5", ".json", ".ckpt")


def load_pretrained(name, *, revision=None, cache_dir=None, local_files_only=False, token=None, **model_kwargs):
    """Builds a ConvNeXt and loads pretrained weights into it, as `timm.create_model(name, pretrained=True)`.

    Args:
        name: a timm tag (`"convnextv2_base.fcmae_ft_in22k_in1k"`), an alias
            (`"convnext_v2_base"`) or architecture (`"convnext_tiny"`, its default tag);
            `"hf://org/repo"` for a folder published by `converters.publish`;
            or a local checkpoint file / folder (safetensors, PyTorch pickle, HF folder,
            `.keras`, or a folder written by `converters.timm_to_keras` / `publish`).
        revision: branch, tag or commit of the Hub repo (default "main").
        cache_dir: converted-weights cache; default `convnext_hub.config`'s `cache_dir`
            (`$CONVNEXT_HUB_CACHE` or `~/.cache/convnext_hub`). Sources are downloaded into huggingface_hub's cache.
        local_files_only: use only the caches (as with `HF_HUB_OFFLINE=1`).
        token: Hugging Face token for private or gated repos.
        **model_kwargs: any non-structural argument of `convnext_hub.create_model`
            (`num_classes`, `input_shape`, `include_top`, `features_only`, `out_indices`,
            `pooling`, `drop_path_rate`, `dropout_rate`, `classifier_activation`, `dtype`, ...).
            `num_classes` defaults to the checkpoint's; another value keeps the backbone
            and leaves a fresh classifier (logged); 0 drops it.

    Returns:
        A `ConvNeXt` whose `pretrained_cfg` holds the checkpoint's configuration
        (preprocessing, license, label set) and its `source`.

    Raises:
        TypeError: a keyword argument that no model takes (with the close matches).
        checkpoints.UnknownCheckpointError: `name` is no known checkpoint and does not look like a path.
        FileNotFoundError: `name` looks like a path (a separator or a checkpoint suffix) that does not exist.
        WeightsUnavailableError: offline / Hub unreachable and the weights are in no cache.
        CacheNotWritableError: the cache directory cannot be written.
        converters.ConversionError: the checkpoint does not fit the architecture.
    """
    check_keywords("load_pretrained", model_kwargs, *model_arguments())
    weights = _weights(name, revision, cache_dir, local_files_only, token)
    model_kwargs.setdefault("num_classes", weights.num_classes)
    model_kwargs["pretrained_cfg"] = weights.pretrained_cfg
    input_shape = model_kwargs.get("input_shape")
    model = weights.load_into(weights.build(**model_kwargs))
    _state_license(weights.pretrained_cfg)
    _note_input_size(weights.pretrained_cfg, input_shape)
    return model


def _weights(name, revision, cache_dir, local_files_only, token):
    """Dispatch on the kind of `name`; registry names win over same-named local paths."""
    if isinstance(name, str) and name.startswith("hf://"):
        return sources.from_keras_repo(name[len("hf://") :], Cache(cache_dir), revision, token, local_files_only)
    if not isinstance(name, os.PathLike):
        try:
            entry = checkpoints.resolve(name)
        except checkpoints.UnknownCheckpointError:
            if not os.path.exists(name):
                if looks_like_path(name):
                    raise FileNotFoundError(f"{name}: no such file or folder") from None
                raise
        else:
            return timm_hub.from_registry(entry, Cache(cache_dir), revision, token, local_files_only)
    if revision is not None:
        raise ValueError(f"`revision` applies to Hub checkpoints only. Received: name={name!r}, revision={revision!r}")
    return sources.from_local(name)


def looks_like_path(name):
    """A name with a path separator or a checkpoint suffix means a file, never a registry name."""
    return isinstance(name, str) and (os.sep in name or "/" in name or name.lower().endswith(CHECKPOINT_SUFFIXES))


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
        cfg.get("name"),
        trained[1],
        trained[2],
        "x".join(map(str, cfg["test_input_size"][1:])) if cfg.get("test_input_size") else "the same",
        "x".join(str(s) for s in input_shape[:2]),
    )
