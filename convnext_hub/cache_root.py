"""Where convnext_hub keeps what it computes once: `$CONVNEXT_HUB_CACHE`, else `~/.cache/convnext_hub`.

The model core needs it too (the JAX compilation cache of `fast_path`), so it
lives below the hub, which holds the converted-weights cache in the same root.
"""
import os

ENV_VAR = "CONVNEXT_HUB_CACHE"


def default_cache_dir():
    """`$CONVNEXT_HUB_CACHE`, else `~/.cache/convnext_hub`."""
    return os.environ.get(ENV_VAR) or os.path.join(os.path.expanduser("~"), ".cache", "convnext_hub")
