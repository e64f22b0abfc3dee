"""Inference throughput of the Keras models against timm, side by side.

Each Keras backend runs in its own process (Keras fixes its backend at import);
inside it, timm and the Keras model are timed alternately on the same batch, so
both see the same machine state. Prints images/s and the Keras / timm ratio.

    python benchmarks/inference.py                        # CPU, fp32, batch 8, 224x224
    python benchmarks/inference.py --backends jax --dtype bfloat16 --batch 256 --timm-compile   # GPU
"""
import argparse
import json
import os
import subprocess
import sys
import time

MODELS = ("convnext_tiny", "convnextv2_tiny")
BACKENDS = ("tensorflow", "jax", "torch")


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


def _keras_runner(model, x, gpu):
    """A call of the Keras model on `x`, as a user would make it on this device.

    CPU: `predict_on_batch` on the numpy batch. GPU (JAX): the batch lives on the
    device, as timm's does, and the forward pass is one jitted `stateless_call`;
    copying 150 MB to and from the host each call would time the PCIe bus.
    """
    import numpy as np
    import keras

    if not gpu:
        return lambda: np.asarray(model.predict_on_batch(x))
    if keras.backend.backend() != "jax":
        raise SystemExit("--gpu is measured on the JAX backend only")
    import jax

    forward = jax.jit(lambda tv, ntv, batch: model.stateless_call(tv, ntv, batch, training=False)[0])
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    batch = jax.device_put(x.astype(keras.config.dtype_policy().compute_dtype))
    return lambda: forward(trainable, non_trainable, batch).block_until_ready()


def measure(args):
    """Runs in a child process whose KERAS_BACKEND is already set."""
    import torch  # torch / timm before keras (TensorFlow): see README
    import timm
    import numpy as np
    import keras

    import convnext_hub

    device = "cuda" if args.gpu else "cpu"
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if args.dtype != "float32":
        keras.mixed_precision.set_global_policy(args.dtype)  # pure low precision, as timm .to(dtype)
    results = []
    for name in args.models:
        ref = timm.create_model(name).eval().to(device=device, dtype=torch_dtype)
        if args.gpu:
            ref = ref.to(memory_format=torch.channels_last)
        if args.timm_compile:
            ref = torch.compile(ref)
        model = convnext_hub.create_model(name, input_shape=(args.size, args.size, 3))
        x = np.random.RandomState(0).rand(args.batch, args.size, args.size, 3).astype("float32")
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device=device, dtype=torch_dtype)
        if args.gpu:
            xt = xt.contiguous(memory_format=torch.channels_last)

        def run_timm():
            with torch.inference_mode():
                ref(xt)
            if args.gpu:
                torch.cuda.synchronize()

        run_keras = _keras_runner(model, x, args.gpu)

        for _ in range(args.warmup):
            run_timm()
            run_keras()
        timm_s, keras_s = [], []
        for _ in range(args.rounds):  # alternate, so drift hits both
            timm_s.append(_time(run_timm, args.seconds))
            keras_s.append(_time(run_keras, args.seconds))
        timm_ips = args.batch / min(timm_s)
        keras_ips = args.batch / min(keras_s)
        results.append(dict(
            model=name, backend=keras.backend.backend(), dtype=args.dtype, batch=args.batch,
            keras_img_s=round(keras_ips, 2), timm_img_s=round(timm_ips, 2),
            ratio=round(keras_ips / timm_ips, 2),
            timm_mode="torch.compile" if args.timm_compile else "eager",
        ))
    print("RESULT " + json.dumps(results), flush=True)


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
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return measure(args)

    rows = []
    for backend in args.backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
                   XLA_PYTHON_CLIENT_PREALLOCATE="false")  # JAX shares the GPU with timm
        cmd = [sys.executable, __file__, "--child", *(argv if argv is not None else sys.argv[1:])]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            print(f"{backend}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        rows += json.loads(lines[-1][len("RESULT "):])

    print(f"{'model':<18}{'backend':<12}{'dtype':<10}{'batch':>6}{'keras img/s':>13}{'timm img/s':>12}{'ratio':>7}")
    for r in rows:
        print(f"{r['model']:<18}{r['backend']:<12}{r['dtype']:<10}{r['batch']:>6}"
              f"{r['keras_img_s']:>13}{r['timm_img_s']:>12}{r['ratio']:>7}")
    print(f"timm mode: {rows[0]['timm_mode'] if rows else '-'}; machine: {os.cpu_count()} CPUs")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
