"""A ConvNeXt's inference forward on JAX as one compiled program, kept between processes.

Outside a trace, Keras runs every op eagerly and JAX compiles each op for its
shapes on first use: a first `model(x)` pays for hundreds of small
compilations. Here the forward is `model.stateless_call` (public Keras API)
under `jax.jit`: one program per input shape and dtype, taking the variable
values as arguments (weights are never baked in).

A new process would still trace and lower that program (seconds for the
bigger models) before JAX's persistent compilation cache can answer. So the
lowered program is also saved, with `jax.export`, under
`<convnext_hub cache>/jax/<jax version>/programs/<key>.jax_exported`, and a
later process deserializes it instead of tracing. `<key>` hashes everything the
program depends on: the model's constructor arguments and layers, every
variable's and input's shape and dtype, the source of this package's modules
that define the model's layers, the Keras, JAX and jaxlib versions and the
device kind; so a changed model, package or JAX never reuses a stale program.
Compiled executables go to JAX's persistent compilation cache under
`<convnext_hub cache>/jax/<jax version>/xla/` (see
`use_persistent_compilation_cache`), unless the user pointed JAX at another
directory; the forward's executable is kept however fast it compiled.
`config.set_jax_compile_cache(False)` (or `CONVNEXT_HUB_JAX_COMPILE_CACHE=0`) keeps both caches off.
"""

import functools
import hashlib
import inspect
import json
import logging
import os
import sys
import weakref
from pathlib import Path

import keras
import numpy as np

from . import config
from .cache_root import default_cache_dir, write_atomically

logger = logging.getLogger("convnext_hub")

PROGRAM_SUFFIX = ".jax_exported"
UNRELATED_ARGUMENTS = ("self", "args", "kwargs", "name", "pretrained_cfg")  # no effect on the program
_programs = weakref.WeakKeyDictionary()  # model -> {argument signature -> compiled callable}
_unwritable = set()  # cache folders found unwritable (said once)


def caching_enabled():
    """The `jax_compile_cache` setting (`convnext_hub.config`)."""
    return config.current().jax_compile_cache


def cache_dir():
    """`<convnext_hub cache>/jax/<jax version>`: programs and executables kept between processes."""
    import jax

    return Path(default_cache_dir()) / "jax" / jax.__version__


def use_persistent_compilation_cache():
    """On JAX, keep compiled executables in `cache_dir()/xla`; the directory in use, or None.

    Left alone when the user pointed JAX at a directory or turned caching off.
    JAX's own threshold stays: only programs that took long to compile are
    kept (writing an entry costs more than compiling a small program again);
    the forward program is kept whatever its time (see `_compiled`).
    """
    if keras.backend.backend() != "jax" or not caching_enabled():
        return None
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    path = _writable(cache_dir() / "xla")
    if path is not None:
        jax.config.update("jax_compilation_cache_dir", os.fspath(path))
    return path


def run(model, inputs):
    """`model(inputs)` in inference, as one compiled program over the model's current variable values."""
    args = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables], inputs)
    signature = (len(args[0]), _signature(args))  # a variable made (non-)trainable changes the arguments
    programs = _programs.setdefault(model, {})
    program = programs.get(signature)
    if program is None:
        program = programs[signature] = _program(model, args)
    return program(*args)


def _signature(tree):
    """Shape and dtype of every array in `tree` (NumPy or JAX)."""
    import jax

    return tuple((tuple(np.shape(x)), str(np.result_type(x))) for x in jax.tree.leaves(tree))


def program_key(model, args):
    """Hex key of the program `model`'s forward compiles to for `args` (see the module docstring)."""
    import jax
    import jaxlib

    parts = {
        "model": _description(model),
        "args": _signature(args),
        "tree": str(jax.tree.structure(args)),
        "source": _source_hash(model),
        "versions": [keras.__version__, jax.__version__, jaxlib.__version__],
        "device": [jax.default_backend(), jax.devices()[0].device_kind],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _program(model, args):
    """The compiled forward for `args`' shapes: deserialized from the cache, else exported (and saved)."""
    import jax

    def stateless_forward(trainable, non_trainable, inputs):
        outputs, _ = model.stateless_call(trainable, non_trainable, inputs, training=False)
        return outputs

    jitted = jax.jit(stateless_forward)
    if not caching_enabled():
        return jitted
    use_persistent_compilation_cache()
    folder = cache_dir() / "programs"
    path = folder / f"{program_key(model, args)}{PROGRAM_SUFFIX}"
    try:
        return _compiled(jax.export.deserialize(bytearray(path.read_bytes())), args)
    except FileNotFoundError:
        pass
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: export again
        logger.info("convnext_hub: ignoring the saved program %s (%s: %s)", path, type(e).__name__, e)
    try:
        exported = jax.export.export(jitted)(*args)
    except Exception as e:  # noqa: BLE001 - an op JAX cannot export: compile without saving
        logger.info(
            "convnext_hub: the forward cannot be exported (%s: %s); compiling it in this process only",
            type(e).__name__,
            e,
        )
        return jitted
    if _writable(folder) is not None:
        _write_atomically(path, exported.serialize())
    return _compiled(exported, args)


def _compiled(exported, args):
    """`exported` compiled for `args`, the executable kept in the persistent cache however fast it compiled."""
    import jax

    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    try:
        return jax.jit(exported.call).lower(*args).compile()
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", threshold)


def _description(model):
    """The model's constructor arguments (but its name and metadata) and every layer's class and dtype policy.

    Read from the model's attributes rather than `get_config()`, which also
    holds what does not change the program (name, `pretrained_cfg`).
    """
    names = [n for n in inspect.signature(type(model).__init__).parameters if n not in UNRELATED_ARGUMENTS]
    return {
        "class": _qualified(type(model)),
        "arguments": {n: _qualified(getattr(model, n)) for n in names if hasattr(model, n)},
        "layers": [(layer.name, _qualified(type(layer)), layer.dtype_policy.name) for layer in model.layers],
    }


def _qualified(value):
    """Callables by module and name (their repr holds a memory address); anything else as it is."""
    return f"{value.__module__}.{value.__qualname__}" if callable(value) and hasattr(value, "__qualname__") else value


def _source_hash(model):
    """sha256 over the sources of this package's modules that define the model and its layers:
    a change to their code makes a new program."""
    modules = sorted({type(obj).__module__ for obj in (model, *model.layers)} & set(sys.modules))
    return hashlib.sha256(
        "".join(
            _file_hash(sys.modules[name].__file__) for name in modules if name.split(".")[0] == __name__.split(".")[0]
        ).encode()
    ).hexdigest()


@functools.lru_cache(maxsize=None)
def _file_hash(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _writable(folder):
    """`folder`, created if needed; None (said once) when it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError as e:
        if folder not in _unwritable:
            _unwritable.add(folder)
            logger.info("convnext_hub: compiled programs are not kept (%s: %s)", folder, e)
        return None


def _write_atomically(path, data):
    """Write `data` to `path` in one `os.replace`; a cache that cannot be written only costs a recompile."""
    try:
        write_atomically(path, data)
    except OSError as e:
        logger.info("convnext_hub: could not save the compiled program %s (%s)", path, e)
