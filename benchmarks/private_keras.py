"""What each private-Keras use of `convnext_hub.keras_compat` buys, measured against its public-API fallback.

For each use, the figure it optimises, with the use and with its fallback, taking turns in one run
(the order flips every round) and reported as medians over the rounds and their ratio (fallback over
use: above 1 means the use buys that much):

1. `run_layers_in_order` (torch inference fast path): one process; `model(x)` and
   `model.predict_on_batch(x)` of a batch of 8 at 224x224, `config.fast_path` on and off; seconds and
   the peak RSS above the RSS before the forward (`VmHWM`, reset before each forward).
2. deferred variables (loading a cache entry): a fresh process per trial on every backend;
   `build_shell` + `fill_shell` from the entry's `variables.safetensors`, against the fallback
   (`weights_io.shells_supported` patched to False: the model built with zero weights, then assigned);
   seconds and peak RSS above the RSS after the imports.
3. `tensorflow_left_unimported`: a fresh process per trial on JAX and torch; `create_model` then
   `get_config`, with Keras' lazy TensorFlow module replaced (as the tests force the fallback) or not;
   seconds of `get_config`, and of the whole process.
4. `accept_any_input`: the crop layer mapped over a `tf.data` pipeline on JAX and torch, with the
   use and with `keras_compat.accept_any_input` patched to do nothing: a capability, recorded as
   works / fails with the error.
5. `saving_through` (streaming a checkpoint into `.weights.h5`): a fresh process per trial on JAX (the
   backend the conversion command picks); `convert_to_weights_file(..., "model.weights.h5")` against
   what a user would otherwise run, `convert(...)` then `model.save_weights(...)`, and the
   safetensors output the project writes itself; seconds and peak RSS above the RSS after the imports.

The figures go to `results/private_keras.json` (`report.write_json`), with the load average before
and after: the machine may be running other work beside it, which the JSON says (`--other-load`).

    python benchmarks/private_keras.py                     # all five, 3 rounds
    python benchmarks/private_keras.py --uses fast_path --rounds 5
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.random_weights import write_random_safetensors  # noqa: E402

USES = ("fast_path", "shells", "tensorflow_unimported", "tf_data", "saving_through")

# Memory figures from /proc/self/status; writing "5" to clear_refs restarts the peak (VmHWM) from the RSS.
PRELUDE = r"""
import json, os, sys, time
T0 = time.perf_counter()

def status_mb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_mb("VmRSS")

def emit(**figures):
    print("RESULT " + json.dumps(figures), flush=True)
"""

FAST_PATH = r"""
import gc
import numpy as np
import torch
import keras
from convnext_hub import config, create_model
rounds = int(sys.argv[1])
model = create_model("convnext_tiny")
x = np.random.RandomState(0).rand(8, 224, 224, 3).astype("float32")
calls = {"call": lambda: model(x), "predict_on_batch": lambda: model.predict_on_batch(x)}

def trial(name, fast):
    with config.settings(fast_path=fast):
        gc.collect()
        base = reset_peak()
        start = time.perf_counter()
        out = keras.ops.convert_to_numpy(calls[name]())
        seconds = time.perf_counter() - start
        assert np.isfinite(out).all()
        return {"seconds": seconds, "peak_above_mb": status_mb("VmHWM") - base}

for name in calls:  # warm-up, both ways
    trial(name, True), trial(name, False)
figures = {name: {"on": [], "off": []} for name in calls}
for r in range(rounds):
    for name in calls:
        for fast in ((True, False) if r % 2 == 0 else (False, True)):
            figures[name]["on" if fast else "off"].append(trial(name, fast))
emit(figures=figures, torch_threads=torch.get_num_threads())
"""

SHELLS = r"""
mode, arch, path = sys.argv[1:4]
import keras
import convnext_hub
from convnext_hub import create_model, weights_io
from convnext_hub.convert.readers import read_safetensors
from convnext_hub.model import zeros_initialized
if mode == "fallback":
    weights_io.shells_supported = lambda: False
imported = time.perf_counter()
base = reset_peak()
start = time.perf_counter()

def build():
    with zeros_initialized():
        return create_model(arch)

model = weights_io.build_shell(build)
weights_io.fill_shell(model, read_safetensors(path, lazy=True), path)
seconds = time.perf_counter() - start
peak = status_mb("VmHWM") - base
assert not weights_io.is_shell(model)
emit(seconds=seconds, peak_above_mb=peak, import_seconds=imported - T0)
"""

TF_UNIMPORTED = r"""
mode = sys.argv[1]
import convnext_hub
if mode == "fallback":
    import keras.src.utils.module_utils as module_utils
    module_utils.tensorflow = object()  # no private record: Keras' serializer as it is
imported = time.perf_counter()
model = convnext_hub.create_model("convnext_tiny")
built = time.perf_counter()
config = model.get_config()
done = time.perf_counter()
assert config["architecture"] == "convnext_tiny"
emit(import_seconds=imported - T0, build_seconds=built - imported, get_config_seconds=done - built,
     build_and_get_config_seconds=done - imported, process_seconds=done - T0,
     tensorflow_imported="tensorflow" in sys.modules)
"""

TF_DATA = r"""
mode = sys.argv[1]
import numpy as np
import keras  # the backend first: TensorFlow imported before torch crashed the process here
import tensorflow as tf
from convnext_hub import keras_compat
from convnext_hub.preprocessing import _fixed_crop_class
if mode == "fallback":
    keras_compat.accept_any_input = lambda layer: None
layer = _fixed_crop_class()(1, 2, 3, 4)
images = np.arange(2 * 6 * 7 * 3, dtype="float32").reshape(2, 6, 7, 3)
try:
    out = next(iter(tf.data.Dataset.from_tensor_slices(images).batch(2).map(layer)))
    emit(works=bool(np.array_equal(out.numpy(), images[:, 1:4, 2:6])), error=None)
except Exception as e:
    emit(works=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
"""

SAVING = r"""
mode, arch, path, out = sys.argv[1:5]
import keras
from convnext_hub.convert import convert, convert_to_weights_file, load_checkpoint
imported = time.perf_counter()
base = reset_peak()
start = time.perf_counter()
state_dict = load_checkpoint(path, lazy=True)
if mode == "streamed_h5":
    convert_to_weights_file(state_dict, os.path.join(out, "model.weights.h5"), arch=arch)
elif mode == "streamed_safetensors":
    convert_to_weights_file(state_dict, os.path.join(out, "variables.safetensors"), arch=arch)
else:
    convert(state_dict, arch=arch).save_weights(os.path.join(out, "model.weights.h5"))
seconds = time.perf_counter() - start
emit(seconds=seconds, peak_above_mb=status_mb("VmHWM") - base, import_seconds=imported - T0,
     backend=keras.backend.backend())
"""


def child(code, args, backend, timeout=900):
    """A fresh interpreter running `PRELUDE + code` with `args`: its RESULT figures, seconds from spawn
    to exit added."""
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PRELUDE + code, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"child ({backend}, {args}) failed:\n{out.stderr[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT ") :]), "spawn_to_exit_seconds": time.perf_counter() - start}


def medians(trials):
    """Per numeric field, the median over `trials`."""
    return {
        key: statistics.median(t[key] for t in trials)
        for key, value in trials[0].items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def compared(trials_by_side, use, fallback, keys):
    """Medians of each side and, per key, fallback / use (where the use's median is above 0) and
    fallback - use."""
    figures = {side: medians(trials) for side, trials in trials_by_side.items()}
    ratios = {key: figures[fallback][key] / figures[use][key] for key in keys if figures[use][key] > 0}
    differences = {key: figures[fallback][key] - figures[use][key] for key in keys}
    return {
        "medians": figures,
        "fallback_over_use": ratios,
        "fallback_minus_use": differences,
        "trials": trials_by_side,
    }


def turns(sides, rounds, run):
    """`run(side)` for each side in each round, the order flipped every round: `{side: [figures]}`."""
    trials = {side: [] for side in sides}
    for r in range(rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            trials[side].append(run(side))
            print(f"  round {r + 1} {side}: {json.dumps(medians([trials[side][-1]]))}", flush=True)
    return trials


def fast_path(args, workdir):
    figures = child(FAST_PATH, [args.fast_path_rounds], "torch")
    result = {"model": "convnext_tiny", "batch": 8, "image_size": 224, "backend": "torch"}
    for name, sides in figures["figures"].items():
        result[name] = compared(
            {"fast_path_on": sides["on"], "fast_path_off": sides["off"]},
            "fast_path_on",
            "fast_path_off",
            ("seconds", "peak_above_mb"),
        )
    result["torch_threads"] = figures["torch_threads"]
    return result


def entry_file(arch, workdir):
    """A cache entry's weights file (`variables.safetensors`, Keras variable paths) of random weights."""
    timm_file = write_random_safetensors(arch, workdir / f"{arch}.timm.safetensors")
    variables = workdir / f"{arch}.variables.safetensors"
    code = (
        "from convnext_hub.convert import convert_to_weights_file, load_checkpoint\n"
        "convert_to_weights_file(load_checkpoint(sys.argv[1], lazy=True), sys.argv[2], arch=sys.argv[3])\n"
        "emit()\n"
    )
    child(code, [timm_file, variables, arch], "jax")
    return timm_file, variables


def shells(args, workdir):
    _, variables = entry_file(args.shell_arch, workdir)
    result = {"model": args.shell_arch, "file_mb": variables.stat().st_size / 1e6, "backends": {}}
    for backend in args.backends:
        print(f" {backend}", flush=True)
        trials = turns(
            ["shell", "fallback"], args.rounds, lambda side: child(SHELLS, [side, args.shell_arch, variables], backend)
        )
        result["backends"][backend] = compared(
            trials, "shell", "fallback", ("seconds", "peak_above_mb", "spawn_to_exit_seconds")
        )
    return result


def tensorflow_unimported(args, workdir):
    result = {"model": "convnext_tiny", "backends": {}}
    for backend in [b for b in args.backends if b != "tensorflow"]:
        print(f" {backend}", flush=True)
        trials = turns(["use", "fallback"], args.rounds, lambda side: child(TF_UNIMPORTED, [side], backend))
        result["backends"][backend] = compared(
            trials, "use", "fallback", ("get_config_seconds", "build_and_get_config_seconds", "process_seconds")
        )
        result["backends"][backend]["tensorflow_imported"] = {
            side: any(t["tensorflow_imported"] for t in ts) for side, ts in trials.items()
        }
    return result


def tf_data(args, workdir):
    return {
        backend: {side: child(TF_DATA, [side], backend) for side in ("use", "fallback")}
        for backend in args.backends
        if backend != "tensorflow"
    }


def saving_through(args, workdir):
    timm_file = write_random_safetensors(args.convert_arch, workdir / f"{args.convert_arch}.timm.safetensors")
    out = workdir / "out"

    def run(side):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        os.sync()  # earlier trials' writes are on disk, not slowing this one's
        return child(SAVING, [side, args.convert_arch, timm_file, out], "jax")

    trials = turns(["streamed_h5", "build_then_save_weights", "streamed_safetensors"], args.rounds, run)
    result = compared(trials, "streamed_h5", "build_then_save_weights", ("seconds", "peak_above_mb"))
    result.update(model=args.convert_arch, checkpoint_mb=timm_file.stat().st_size / 1e6, backend="jax")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uses", nargs="+", default=list(USES), choices=USES)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fast-path-rounds", type=int, default=7, help="rounds of the in-process forwards")
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--shell-arch", default="convnext_tiny")
    parser.add_argument("--convert-arch", default="convnext_large")
    parser.add_argument("--other-load", default="", help="what else ran on the machine meanwhile (recorded)")
    parser.add_argument("--results", default="private_keras", help="name of the results' .json")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="convnext_hub-private-keras-"))
    load_before = os.getloadavg()
    results = {}
    try:
        for use in args.uses:
            print(use, flush=True)
            start = time.perf_counter()
            results[use] = globals()[use](args, workdir)
            results[use]["benchmark_seconds"] = time.perf_counter() - start
            results[use]["measured"] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_average": os.getloadavg()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    earlier = report.RESULTS / f"{args.results}.json"
    if set(args.uses) != set(USES) and earlier.exists():  # a partial run keeps the other uses' figures
        results = {**json.loads(earlier.read_text()).get("uses", {}), **results}
    payload = {
        "rounds": args.rounds,
        "fast_path_rounds": args.fast_path_rounds,
        "load_average_before": load_before,
        "other_load": args.other_load or None,
        "uses": {use: results[use] for use in USES if use in results},
    }
    print(json.dumps({use: r.get("fallback_over_use", r) for use, r in results.items()}, indent=1, default=str))
    print(f"wrote {report.write_json(args.results, payload)}")


if __name__ == "__main__":
    main()
