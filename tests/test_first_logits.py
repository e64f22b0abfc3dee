"""The first forward on JAX: one compiled program, kept between processes, keyed so it is never stale.

The JAX checks run in child processes with `KERAS_BACKEND=jax` (any backend runs
this file); each child counts JAX's own compile events (`jax.monitoring`).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from convnext_hub import compiled_forward, create_model

REPO_ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import json, os, sys
    import jax, keras
    import numpy as np
    import convnext_hub
    from convnext_hub import create_model

    events = {"programs": 0, "cache_hits": 0}  # programs compiled or loaded from the persistent cache

    def on_duration(name, *args, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            events["programs"] += 1

    def on_event(name, *args, **kwargs):
        if name == "/jax/compilation_cache/cache_hits":
            events["cache_hits"] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)

    keras.utils.set_random_seed(0)
    model = create_model("convnext_atto", input_shape=(64, 72, 3))
    x = np.random.default_rng(0).random((2, 64, 72, 3), dtype=np.float32)
    result = {}

    def forward(label):
        before = dict(events)
        out = np.asarray(model(x))
        np.save(os.path.join(sys.argv[1], label + ".npy"), out)
        result[label] = {k: events[k] - before[k] for k in events}

    forward("first")
    forward("again")
    if sys.argv[2] == "with_plain":
        convnext_hub.config.set_fast_path(False)
        forward("plain")
        np.save(os.path.join(sys.argv[1], "predict.npy"), model.predict(x, verbose=0))
    print("RESULT " + json.dumps(result))
    """
)


def run_child(cache, out, mode="", **env):
    """Run CHILD on JAX with the convnext_hub cache `cache`; its RESULT."""
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "PYTHONPATH": str(REPO_ROOT),
        "CONVNEXT_HUB_CACHE": str(cache),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **env,
    }
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), mode], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line[len("RESULT ") :])


def close(a, b):
    return np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """A first and a second process computing the same first logits with one cache."""
    root = tmp_path_factory.mktemp("first_logits")
    cache, first, second = root / "cache", root / "first", root / "second"
    first.mkdir(), second.mkdir()
    return cache, (first, run_child(cache, first, "with_plain")), (second, run_child(cache, second))


def test_first_forward_is_one_program_equal_to_keras_call(two_processes):
    _, (out, result), _ = two_processes
    assert result["first"] == {"programs": 1, "cache_hits": 0}, result  # one program, not one per op
    assert result["again"]["programs"] == 0, result
    assert result["plain"]["programs"] > 20, result  # what Keras' eager call compiles
    assert close(np.load(out / "first.npy"), np.load(out / "plain.npy"))
    assert close(np.load(out / "predict.npy"), np.load(out / "plain.npy"))


def test_second_process_reuses_the_program(two_processes):
    cache, (first, _), (second, result) = two_processes
    assert result["first"] == {"programs": 1, "cache_hits": 1}, result  # loaded, not compiled
    np.testing.assert_array_equal(np.load(second / "first.npy"), np.load(first / "first.npy"))
    programs = list((cache / "jax").glob(f"*/programs/*{compiled_forward.PROGRAM_SUFFIX}"))
    assert len(programs) == 1 and list((cache / "jax").glob("*/xla/*"))


def test_opt_out_keeps_nothing(tmp_path):
    result = run_child(tmp_path / "cache", tmp_path, CONVNEXT_HUB_JAX_COMPILE_CACHE="0")
    assert result["first"] == {"programs": 1, "cache_hits": 0}
    assert not (tmp_path / "cache" / "jax").exists()


def test_program_key_changes_with_model_input_code_and_versions(monkeypatch):
    """Whatever changes the program changes the key (and a JAX version has its own folder)."""
    model = create_model("convnext_atto", input_shape=(64, 64, 3))

    def key(m=model, shape=(1, 64, 64, 3)):
        args = (
            [np.zeros(v.shape, v.dtype) for v in m.trainable_variables],
            [np.zeros(v.shape, v.dtype) for v in m.non_trainable_variables],
            np.zeros(shape, np.float32),
        )
        return compiled_forward.program_key(m, args)

    base = key()
    assert key() == base
    assert key(shape=(2, 64, 64, 3)) != base
    assert key(create_model("convnext_atto", input_shape=(64, 64, 3), num_classes=10)) != base
    assert key(create_model("convnext_atto", input_shape=(64, 64, 3), classifier_activation="softmax")) != base
    monkeypatch.setattr(compiled_forward, "_file_hash", lambda path: "edited " + path)
    assert key() != base
    monkeypatch.undo()
    import jax

    folder = compiled_forward.cache_dir()
    monkeypatch.setattr(jax, "__version__", "0.0.0-other")
    assert key() != base and compiled_forward.cache_dir() != folder
