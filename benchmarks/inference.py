"""Inference throughput of the Keras models against timm, side by side.

Each Keras backend runs in its own process (Keras fixes its backend at import);
inside it, timm and the Keras model are timed alternately on the same batch, so
both see the same machine state. Prints images/s and the Keras / timm ratio.

    python benchmarks/inference.py                        # CPU, fp32, batch 8, 224x224
    python benchmarks/inference.py --backends jax --dtype bfloat16 --batch 256 --gpu --timm-compile \
        --depthwise xla pad:96 --check --json out.json    # GPU: A/B of depthwise formulations

`--gpu` keeps the batch on the device and times one jitted `stateless_call` per
depthwise formulation (`convnext_hub.layers.DepthwiseConv2D.JAX_FORMULATIONS`, or
`NAME:MAX_CHANNELS`); `--check` gives timm and Keras the same random weights and
holds each low-precision output against the other side's float32 output.
`--smoke` runs those code paths on the CPU at whatever size is given, to check the
script before a GPU run.

On the CPU in float32 each row also gives both sides' fraction of the matrix-product
bound: the machine's best fp32 matrix product (measured here, `matmul_bound_gflops`)
sets the least time the model's Dense and Conv2D products can take. Without `--json`
a CPU run writes `results/inference.json` and `inference.png`.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("convnext_tiny", "convnextv2_tiny")
BACKENDS = ("tensorflow", "jax", "torch")
REPO_ROOT = Path(__file__).resolve().parents[1]
# A low-precision output passes `--check` when its max|d| from the other side's float32
# output is within this fraction of max|float32|, or within twice the error of timm's own
# low-precision output (the yardstick measured on the same input): bfloat16 keeps 8
# significant bits, and rounding errors compound over a network's depth.
LOW_PRECISION_TOLERANCE = 0.05
# Keras float32 against timm float32 (full-precision products on both sides): the ports agree
# to ~1e-6 x max|timm| on CPU; the GPU's kernels sum in other orders.
FLOAT32_TOLERANCE = 1e-4


def _time(fn, seconds):
    """Images/s-free timing: median seconds per call over at least 3 calls and `seconds` s."""
    durations = []
    start = time.perf_counter()
    while len(durations) < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - t0)
    durations.sort()
    return durations[len(durations) // 2]


def matmul_gflop(model, batch):
    """GFLOP of the model's matrix products per batch: every Dense and (non-depthwise) Conv2D at its output size."""
    import math

    import keras

    total = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
            positions = batch * math.prod(layer.output.shape[1:-1])
            total += 2 * math.prod(layer.kernel.shape) * positions
    return total / 1e9


def matmul_bound_gflops(seconds=1.0):
    """The machine's fp32 matrix-product speed, GFLOP/s: the best torch `mm` over a few square sizes.

    A forward whose matrix products need F GFLOP cannot take less than F / this.
    """
    import torch

    best = 0.0
    for n in (1024, 2048, 3072):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        best = max(best, 2 * n**3 / _time(lambda: torch.mm(a, b), seconds) / 1e9)
    return best


def environment():
    """Versions, device and date, for a benchmark's JSON (libraries are read only if already imported)."""
    info = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        python=platform.python_version(),
        machine=platform.machine(),
        cpus=os.cpu_count(),
    )
    for name in ("keras", "jax", "torch", "timm", "tensorflow"):
        if name in sys.modules:
            info[name] = getattr(sys.modules[name], "__version__", "?")
    if "jax" in sys.modules:
        info["jax_devices"] = [str(d.device_kind) for d in sys.modules["jax"].devices()]
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        info["torch_device"] = sys.modules["torch"].cuda.get_device_name()
    return info


def write_json(path, payload):
    """Writes `payload` to `path` atomically, so a run killed mid-write leaves the previous file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)


def run_child(script, backend, argv, timeout=None, env_extra=None):
    """Runs `script --child argv` under `KERAS_BACKEND=backend`; its `RESULT` line as data, or an error dict.

    Keras fixes its backend at import, so each backend runs in its own process.
    `env_extra` adds environment variables.
    """
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="3",
        XLA_PYTHON_CLIENT_PREALLOCATE="false",
        **(env_extra or {}),
    )  # JAX shares the GPU with timm
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(script), "--child", *argv]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        stdout, stderr, error = out.stdout, out.stderr, f"exit {out.returncode}" if out.returncode else None
    except subprocess.TimeoutExpired as expired:  # its output may come as bytes
        stdout, stderr = (
            s.decode(errors="replace") if isinstance(s, bytes) else s or "" for s in (expired.stdout, expired.stderr)
        )
        error = f"timed out after {timeout:.0f} s"
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return {"error": error or "no RESULT line", "stderr": stderr[-3000:]}
    data = json.loads(lines[-1][len("RESULT ") :])
    if error:  # children print what they have measured so far: a late failure keeps it
        data["partial"] = dict(error=error, stderr=stderr[-3000:])
    return data


@contextlib.contextmanager
def depthwise_formulation(spec):
    """The `jax_depthwise` setting is `spec` (None: left as it is) for the calls traced inside."""
    from convnext_hub import config

    if spec is None:
        yield
        return
    with config.settings(jax_depthwise=spec):
        yield


def relative_error(actual, expected):
    """max|actual - expected| / max|expected|, in float64."""
    import numpy as np

    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


def _keras_runner(model, x, gpu, formulation=None):
    """A call of the Keras model on `x`, as a user would make it on this device; it returns the output.

    CPU: `predict_on_batch` on the numpy batch. GPU (JAX): the batch lives on the
    device, as timm's does, and the forward pass is one jitted `stateless_call`;
    copying 150 MB to and from the host each call would time the PCIe bus. The
    jitted function is traced (and compiled) here, under `formulation`: each runner
    keeps the depthwise formulation it was made with.
    """
    import keras
    import numpy as np

    if not gpu:
        return lambda: np.asarray(model.predict_on_batch(x))
    if keras.backend.backend() != "jax":
        raise SystemExit("--gpu is measured on the JAX backend only")
    import jax

    forward = jax.jit(lambda tv, ntv, batch: model.stateless_call(tv, ntv, batch, training=False)[0])
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    batch = jax.device_put(x.astype(model.dtype_policy.compute_dtype))
    # float32 references use full-precision products (the GPU's default rounds them to tf32).
    precision = "highest" if model.dtype_policy.compute_dtype == "float32" else None

    def call():  # the contexts are part of jit's cache key: every call enters the same ones
        with depthwise_formulation(formulation), jax.default_matmul_precision(precision):
            return forward(trainable, non_trainable, batch).block_until_ready()

    call()
    return call


def _timm_pair(timm, torch, name, args, device, torch_dtype):
    """timm's model in the timed precision (compiled if asked) and, for `--check`, its float32 twin.

    With `--check` every parameter is randomized first (timm's initial layer scale of
    1e-6 would make every block nearly the identity and hide a wrong one).
    """
    import copy

    ref32 = timm.create_model(name).eval()
    if args.check:
        from convnext_hub.convert.randomize import randomize_

        randomize_(ref32)
    ref = copy.deepcopy(ref32).to(device=device, dtype=torch_dtype)
    if args.gpu:
        ref = ref.to(memory_format=torch.channels_last)
    if args.timm_compile:
        ref = torch.compile(ref, backend="eager" if args.smoke else "inductor")
    return ref, (ref32.to(device) if args.check else None)


def _keras_pair(keras, convnext_hub, name, args, ref32):
    """The Keras model in the timed precision and, for `--check`, its float32 twin, both with timm's weights."""
    shape = (args.size, args.size, 3)
    model32 = None
    if args.check:
        from converters import load_timm_state_dict

        keras.mixed_precision.set_global_policy("float32")
        model32 = convnext_hub.create_model(name, input_shape=shape)
        load_timm_state_dict(model32, {k: v.detach().cpu().numpy() for k, v in ref32.state_dict().items()})
    if args.dtype != "float32":
        keras.mixed_precision.set_global_policy(args.dtype)  # pure low precision, as timm .to(dtype)
    model = convnext_hub.create_model(name, input_shape=shape)
    if model32 is not None:
        model.set_weights(model32.get_weights())
    return model, model32


def _check(run_timm, keras_runs, ref32, model32, x, xt, args):
    """Each low-precision output against the other side's float32 output on the timed batch."""
    import numpy as np
    import torch

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # true float32 reference
    x32 = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(xt.device)  # not xt: rounded to low precision
    with torch.inference_mode():
        timm32 = ref32(x32).float().cpu().numpy()
    keras32 = np.asarray(_keras_runner(model32, x, args.gpu)(), np.float32)
    timm_low = run_timm().float().cpu().numpy()
    timm_own = relative_error(timm_low, timm32)
    bar = max(LOW_PRECISION_TOLERANCE, 2 * timm_own)
    check = dict(
        keras_fp32_vs_timm_fp32=relative_error(keras32, timm32),
        timm_low_vs_timm_fp32=timm_own,
        timm_low_vs_keras_fp32=relative_error(timm_low, keras32),
        bar=bar,
        keras_low_vs_timm_fp32={},
    )
    for formulation, run in keras_runs.items():
        check["keras_low_vs_timm_fp32"][formulation or "auto"] = relative_error(np.asarray(run(), np.float32), timm32)
    check["passed"] = bool(
        check["keras_fp32_vs_timm_fp32"] <= FLOAT32_TOLERANCE
        and check["timm_low_vs_keras_fp32"] <= bar
        and all(e <= bar for e in check["keras_low_vs_timm_fp32"].values())
    )
    return check


def measure(args):
    """Runs in a child process whose KERAS_BACKEND is already set."""
    import timm
    import torch  # torch / timm before keras (TensorFlow): see README

    # isort: split
    import keras
    import numpy as np

    import convnext_hub

    device = "cuda" if args.gpu and not args.smoke else "cpu"
    bound = matmul_bound_gflops() if device == "cpu" and args.dtype == "float32" else None
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    formulations = args.depthwise or [None]
    results = []
    for name in args.models:
        ref, ref32 = _timm_pair(timm, torch, name, args, device, torch_dtype)
        model, model32 = _keras_pair(keras, convnext_hub, name, args, ref32)
        x = np.random.RandomState(0).rand(args.batch, args.size, args.size, 3).astype("float32")
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device=device, dtype=torch_dtype)
        if args.gpu:
            xt = xt.contiguous(memory_format=torch.channels_last)

        def run_timm():
            with torch.inference_mode():
                out = ref(xt)
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        runs = {f: _keras_runner(model, x, args.gpu, f) for f in formulations}
        check = _check(run_timm, runs, ref32, model32, x, xt, args) if args.check else None
        del ref32, model32

        for _ in range(args.warmup):
            run_timm()
            for run in runs.values():
                run()
        timm_s, keras_s = [], {f: [] for f in formulations}
        for _ in range(args.rounds):  # alternate, so drift hits both
            timm_s.append(_time(run_timm, args.seconds))
            for f, run in runs.items():
                keras_s[f].append(_time(run, args.seconds))
        timm_ips = args.batch / min(timm_s)
        gflop = matmul_gflop(model, args.batch)
        for f in formulations:
            keras_ips = args.batch / min(keras_s[f])
            fraction = {}
            if bound:  # the fastest possible forward (its matrix products at the bound) / the measured one
                fraction = dict(
                    matmul_gflop=round(gflop, 2),
                    bound_gflops=round(bound, 1),
                    keras_fraction_of_bound=round(gflop / bound * keras_ips / args.batch, 3),
                    timm_fraction_of_bound=round(gflop / bound * timm_ips / args.batch, 3),
                )
            results.append(
                dict(
                    model=name,
                    backend=keras.backend.backend(),
                    dtype=args.dtype,
                    batch=args.batch,
                    size=args.size,
                    depthwise=f or "auto",
                    keras_img_s=round(keras_ips, 2),
                    timm_img_s=round(timm_ips, 2),
                    ratio=round(keras_ips / timm_ips, 3),
                    timm_mode="torch.compile" if args.timm_compile else "eager",
                    check=check,
                    **fraction,
                )
            )
        print("RESULT " + json.dumps(dict(results=results, environment=environment())), flush=True)


def _bound_column(row):
    """Keras / timm fraction of the matrix-product bound, e.g. "0.61/0.48"."""
    if "keras_fraction_of_bound" not in row:
        return "-"
    return f"{row['keras_fraction_of_bound']:.2f}/{row['timm_fraction_of_bound']:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--gpu", action="store_true", help="run timm on CUDA (Keras uses its backend's GPU)")
    parser.add_argument("--timm-compile", action="store_true", help="time timm under torch.compile")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum time per measurement")
    parser.add_argument(
        "--depthwise",
        nargs="+",
        metavar="SPEC",
        help="with --gpu: JAX depthwise formulations to time side by side (NAME or NAME:MAX_CHANNELS)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="with --gpu: same random weights on both sides; outputs checked against float32",
    )
    parser.add_argument("--smoke", action="store_true", help="with --gpu: run its code paths on the CPU")
    parser.add_argument("--json", help="write the results, with versions and device, to this file")
    parser.add_argument("--timeout", type=float, help="seconds allowed to each backend's process")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (args.depthwise or args.check or args.smoke) and not args.gpu:
        parser.error("--depthwise, --check and --smoke go with --gpu")
    if args.child:
        return measure(args)

    rows, failures, env_info = [], {}, None
    for backend in args.backends:
        out = run_child(__file__, backend, argv if argv is not None else sys.argv[1:], args.timeout)
        if "error" in out or "partial" in out:
            failure = out.get("partial", out)
            print(f"{backend}: failed ({failure['error']})\n{failure['stderr']}", file=sys.stderr)
            failures[backend] = failure
        if "error" in out:
            continue
        rows += out["results"]
        env_info = out["environment"]

    print(
        f"{'model':<18}{'backend':<12}{'depthwise':<13}{'dtype':<10}{'batch':>6}"
        f"{'keras img/s':>13}{'timm img/s':>12}{'ratio':>8}{'bound K/t':>11}  check"
    )
    for r in rows:
        check = r["check"]
        verdict = (
            "-"
            if check is None
            else (
                f"{'PASS' if check['passed'] else 'FAIL'} (max|d| {check['keras_low_vs_timm_fp32'][r['depthwise']]:.1e}"
                f" x max|timm fp32|; timm's own {check['timm_low_vs_timm_fp32']:.1e})"
            )
        )
        print(
            f"{r['model']:<18}{r['backend']:<12}{r['depthwise']:<13}{r['dtype']:<10}{r['batch']:>6}"
            f"{r['keras_img_s']:>13}{r['timm_img_s']:>12}{r['ratio']:>8}"
            f"{_bound_column(r):>11}  {verdict}"
        )
    print(f"timm mode: {rows[0]['timm_mode'] if rows else '-'}; machine: {os.cpu_count()} CPUs")
    if args.json:
        write_json(
            args.json,
            dict(
                benchmark="inference",
                argv=argv if argv is not None else sys.argv[1:],
                results=rows,
                failures=failures,
                environment=env_info,
            ),
        )
    if rows and not args.gpu and args.json is None:  # the CPU figures the README shows
        sys.path.insert(0, str(REPO_ROOT))
        from benchmarks import report

        report.write_json("inference", dict(results=rows, failures=failures, environment=env_info))
        groups = {}
        for r in rows:
            groups.setdefault(r["model"], {})[r["backend"]] = r["ratio"]
        report.bar_chart(
            "inference",
            f"Keras on CPU, images/s / timm eager's ({rows[0]['dtype']}, batch "
            f"{rows[0]['batch']}, {rows[0]['size']}x{rows[0]['size']})",
            groups,
            "ratio to timm",
            reference=1.0,
        )
    return 0 if rows and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
