"""Pretrained ConvNeXt weights: downloaded from the Hub, converted once, cached, loaded without torch.

Modules: `fetch` (Hub I/O), `cache` (the converted-weights cache), `sources`
(registry / `hf://` / local sources -> weights), `loader` (`load_pretrained`).
"""

from .cache import Cache, CacheNotWritableError, default_cache_dir
from .fetch import SourceHashMismatchError, WeightsUnavailableError
from .loader import load_pretrained

__all__ = [
    "Cache",
    "CacheNotWritableError",
    "SourceHashMismatchError",
    "WeightsUnavailableError",
    "default_cache_dir",
    "load_pretrained",
]
