"""Where convnext_hub keeps what it computes once: `config.current().cache_dir`.

The model core needs it too (the JAX compilation cache of `fast_path`), so it
lives below the hub, which holds the converted-weights cache in the same root.
"""

import os
import tempfile

from . import config


def default_cache_dir():
    """`config.current().cache_dir`: `$CONVNEXT_HUB_CACHE`, else `~/.cache/convnext_hub`, or what was set."""
    return config.current().cache_dir


def write_atomically(path, data):
    """Writes `data` (bytes or str) to `path` in one `os.replace`: readers see the old file, the new one,
    or none, never half of one. Raises OSError (the temporary file removed)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w" if isinstance(data, str) else "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
