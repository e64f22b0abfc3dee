"""Converting a big safetensors checkpoint to a Keras weights file, against timm loading it.

Makes a random `convnextv2_huge` checkpoint (2.6 GB) once, then in fresh
processes measures wall time (imports included) and peak RSS of
  - ours, on each Keras backend: `converters.convert_to_weights_file`, what
    `python -m converters.timm_to_keras FILE --out DIR` runs (tensors streamed
    from the file into the `.weights.h5`, the model never holds them);
  - timm: `timm.create_model(arch, pretrained=True)` from the same file.

    python benchmarks/convert.py [--arch convnextv2_huge] [--dir /tmp/convnext_bench] [--backends jax]
"""
import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time
mode, arch, path, out = sys.argv[1:5]
start = time.perf_counter()
if mode == "timm":
    import timm
    model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=path))
else:
    from converters import convert_to_weights_file, load_checkpoint
    convert_to_weights_file(load_checkpoint(path, lazy=True), out, source=path)
seconds = time.perf_counter() - start
print("RESULT " + json.dumps(dict(seconds=seconds, peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)))
"""


def make_checkpoint(arch, path):
    """A timm-layout safetensors file with random float32 weights (no model is built)."""
    import numpy as np
    import timm
    import torch
    from safetensors.numpy import save_file

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in timm.create_model(arch).state_dict().items()}
    rng = np.random.default_rng(0)
    tensors = {k: rng.standard_normal(s, dtype=np.float32) * 0.02 for k, s in shapes.items()}
    save_file(tensors, path)


def run(mode, arch, path, out, backend="tensorflow"):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=backend)
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, arch, path, out], env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="convnextv2_huge")
    parser.add_argument("--dir", default="/tmp/convnext_bench")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    args = parser.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, f"{args.arch}.safetensors")
    if not os.path.exists(path):
        t = time.perf_counter()
        make_checkpoint(args.arch, path)
        print(f"made {path} in {time.perf_counter() - t:.0f} s")
    size = os.path.getsize(path)
    out = os.path.join(args.dir, f"{args.arch}.weights.h5")
    modes = [("timm", "timm", "tensorflow")] + [(f"ours ({b})", "ours", b) for b in args.backends]
    runs = {label: [] for label, _, _ in modes}
    for _ in range(args.repeats):  # alternate, so drift hits every mode
        for label, mode, backend in modes:
            runs[label].append(run(mode, args.arch, path, out, backend))
    best = {label: dict(seconds=min(r["seconds"] for r in rs), peak_rss=min(r["peak_rss"] for r in rs))
            for label, rs in runs.items()}
    print(f"{args.arch}: checkpoint {size / 1e9:.2f} GB; {os.cpu_count()} CPUs; best of {args.repeats}")
    for label, r in best.items():
        print(f"  {label:<18} {r['seconds']:6.1f} s  ({r['seconds'] / best['timm']['seconds']:.2f}x timm)"
              f"   peak RSS {r['peak_rss'] / 1e9:5.2f} GB = {r['peak_rss'] / size:.2f}x file")


if __name__ == "__main__":
    main()
