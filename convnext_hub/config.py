"""Every switch of convnext_hub, read from the environment once, here, and settable from Python.

| setting | environment variable | default | what it changes |
| --- | --- | --- | --- |
| `fast_path` | `CONVNEXT_HUB_FAST_PATH` | on | inference forwards (see `convnext_hub.fast_path`) |
| `jax_compile_cache` | `CONVNEXT_HUB_JAX_COMPILE_CACHE` | on | JAX keeps compiled forwards under `cache_dir` |
| `jax_depthwise` | `CONVNEXT_HUB_JAX_DEPTHWISE` | `auto` | the JAX depthwise-conv formulation (`set_jax_depthwise`) |
| `cache_dir` | `CONVNEXT_HUB_CACHE` | `~/.cache/convnext_hub` | where converted weights and JAX programs are kept |

The environment is read when this module is imported; afterwards the setters
(`set_fast_path`, ...) or the `settings(...)` context manager change a value for
the running process. No
other module of the package reads `os.environ`, so a value set here is the
value every part of the package sees.

Example:
    ```python
    import convnext_hub
    from convnext_hub import config

    with config.settings(fast_path=False):  # Keras' own per-layer call, e.g. to compare
        model = convnext_hub.create_model("convnext_atto", input_shape=(64, 64, 3))
    config.set_cache_dir("/tmp/convnext_hub_cache")
    ```
"""

import contextlib
import dataclasses
import os

from .arguments import unknown_argument_message

__all__ = [
    "JAX_DEPTHWISE_FORMULATIONS",
    "Settings",
    "current",
    "set_cache_dir",
    "set_fast_path",
    "set_jax_compile_cache",
    "set_jax_depthwise",
    "settings",
]

JAX_DEPTHWISE_FORMULATIONS = ("xla", "shifted", "nchw", "pad")
_OFF = ("0", "false", "off", "no")
_ENVIRONMENT = {
    "fast_path": "CONVNEXT_HUB_FAST_PATH",
    "jax_compile_cache": "CONVNEXT_HUB_JAX_COMPILE_CACHE",
    "jax_depthwise": "CONVNEXT_HUB_JAX_DEPTHWISE",
    "cache_dir": "CONVNEXT_HUB_CACHE",
}


@dataclasses.dataclass
class Settings:
    """The values in force; `current()` returns the live instance (read it, change it through the setters)."""

    fast_path: bool = True
    jax_compile_cache: bool = True
    jax_depthwise: str = "auto"
    cache_dir: str = os.path.join(os.path.expanduser("~"), ".cache", "convnext_hub")


def _switch(value):
    return str(value).strip().lower() not in _OFF


def _depthwise_spec(spec):
    """`spec` normalised, or ValueError: a typo in an A/B run must fail, not silently measure the default."""
    spec = str(spec).strip().lower() or "auto"
    name, colon, limit = spec.partition(":")
    if spec != "auto" and (name not in JAX_DEPTHWISE_FORMULATIONS or (colon and not limit.isdigit())):
        raise ValueError(
            "`jax_depthwise` must be 'auto', NAME or NAME:MAX_CHANNELS with NAME in "
            f"{JAX_DEPTHWISE_FORMULATIONS}. Received: jax_depthwise={spec!r}"
        )
    return spec


_PARSERS = {"fast_path": _switch, "jax_compile_cache": _switch, "jax_depthwise": _depthwise_spec, "cache_dir": str}


def from_environment(environ):
    """The `Settings` that `environ` (a mapping of environment variables) gives; ValueError naming a bad one."""
    values = {}
    for field, variable in _ENVIRONMENT.items():
        raw = environ.get(variable, "")
        if raw.strip():
            try:
                values[field] = _PARSERS[field](raw)
            except ValueError as error:
                raise ValueError(f"{variable}: {error}") from None
    return Settings(**values)


_current = from_environment(os.environ)


def current():
    """The `Settings` in force."""
    return _current


def set_fast_path(enabled):
    """Turns the inference fast paths on or off (see `convnext_hub.fast_path`). Returns the previous value."""
    return _set("fast_path", enabled)


def set_jax_compile_cache(enabled):
    """Lets JAX keep compiled forwards under `cache_dir` between processes, or not. Returns the previous value."""
    return _set("jax_compile_cache", enabled)


def set_jax_depthwise(spec):
    """The JAX depthwise formulation: "auto", a name of `JAX_DEPTHWISE_FORMULATIONS`, or "NAME:MAX_CHANNELS"
    (layers of at most that many channels use NAME, the others "xla"). Read when a call is traced, so it
    applies to programs traced afterwards. Returns the previous value."""
    return _set("jax_depthwise", spec)


def set_cache_dir(path):
    """Where converted weights and JAX programs are kept. Returns the previous value."""
    return _set("cache_dir", os.fspath(path))


def _set(name, value):
    previous = getattr(_current, name)
    setattr(_current, name, _PARSERS[name](value))
    return previous


@contextlib.contextmanager
def settings(**values):
    """Inside, the named settings hold `values`; the previous ones are restored on the way out.

    Raises:
        TypeError: a name that is no setting (with the close matches).
    """
    for name in values:
        if name not in _ENVIRONMENT:
            raise TypeError(unknown_argument_message("settings", name, _ENVIRONMENT))
    previous = {name: _set(name, value) for name, value in values.items()}
    try:
        yield _current
    finally:
        for name, value in previous.items():
            setattr(_current, name, value)
