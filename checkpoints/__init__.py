"""Registry of timm's pretrained ConvNeXt checkpoints, as plain data.

Importing this package loads no ML framework (no keras, numpy, torch or timm):
everything comes from `registry.json` and `labels/*.txt` next to this file,
both regenerated from timm with `python -m checkpoints.generate`.

Names accepted by `resolve`:

* a timm tag, e.g. `"convnextv2_base.fcmae_ft_in22k_in1k"`;
* a bare architecture name, e.g. `"convnext_tiny"`, meaning the tag
  `timm.create_model(name, pretrained=True)` would load;
* an alias, e.g. `"convnext_v1_tiny"` or `"convnext_v2_base"`.
"""

import copy
import difflib
import fnmatch
import functools
import json
from importlib import resources

__all__ = [
    "LABEL_SETS",
    "NON_COMMERCIAL_LICENSES",
    "UnknownCheckpointError",
    "aliases",
    "label_names",
    "list_pretrained",
    "resolve",
]

LABEL_SETS = ("imagenet-1k", "imagenet-12k", "imagenet-22k")
# Licenses of registry checkpoints that allow non-commercial use only (stated at load time and on model cards).
NON_COMMERCIAL_LICENSES = ("cc-by-nc-4.0", "dinov3-license", "fair-noncommercial-research-license")
_MAX_SUGGESTIONS = 5


class UnknownCheckpointError(ValueError):
    """A name that is neither a timm tag, an alias nor a bare architecture name."""


@functools.cache
def _registry() -> dict:
    """The parsed registry.json, read once on first use."""
    text = resources.files(__name__).joinpath("registry.json").read_text(encoding="utf-8")
    return json.loads(text)


def list_pretrained(pattern: str | None = None) -> list[str]:
    """Sorted timm tags, optionally those matching an fnmatch `pattern`.

    The pattern is matched (case-sensitively) against timm tags only, never
    against aliases, e.g. `list_pretrained("convnextv2_*.fcmae")`.
    """
    tags = sorted(_registry()["checkpoints"])
    if pattern is None:
        return tags
    return [tag for tag in tags if fnmatch.fnmatchcase(tag, pattern)]


def aliases() -> dict[str, str]:
    """Alias and bare architecture name -> the timm tag it stands for."""
    return dict(_registry()["aliases"])


def resolve(name: str) -> dict:
    """A copy of the registry entry for a timm tag, an alias or an architecture."""
    registry = _registry()
    tag = registry["aliases"].get(name, name)
    try:
        entry = registry["checkpoints"][tag]
    except KeyError:
        raise UnknownCheckpointError(_unknown_name_message(name)) from None
    return copy.deepcopy(entry)


def _unknown_name_message(name) -> str:
    """Error text naming `name` and the closest known names."""
    registry = _registry()
    known = [*registry["checkpoints"], *registry["aliases"]]
    matches = difflib.get_close_matches(str(name), known, n=_MAX_SUGGESTIONS)
    hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
    return (
        f"Unknown checkpoint name {name!r}.{hint} "
        "See checkpoints.list_pretrained() and checkpoints.aliases() for every known name."
    )


def label_names(label_set: str) -> list[str]:
    """Class names of `label_set` (one of LABEL_SETS), in class-index order."""
    if label_set not in LABEL_SETS:
        raise ValueError(f"Unknown label set {label_set!r}; expected one of: {', '.join(LABEL_SETS)}.")
    return list(_read_label_file(label_set))


@functools.cache
def _read_label_file(label_set: str) -> tuple[str, ...]:
    """The lines of labels/<label_set>.txt, read once."""
    label_file = resources.files(__name__).joinpath("labels").joinpath(f"{label_set}.txt")
    text = label_file.read_text(encoding="utf-8")
    return tuple(text.splitlines())
