"""Converting a big safetensors checkpoint to a Keras weights file, against timm loading it.

Makes a random `convnextv2_huge` checkpoint (2.6 GB) once, then in fresh
processes measures wall time and peak RSS of
  - ours:  `converters.convert` of the file (lazy, one tensor at a time) + `save_weights`;
  - timm:  `timm.create_model(arch, pretrained=True)` from the same file.

    python benchmarks/convert.py [--arch convnextv2_huge] [--dir /tmp/convnext_bench]
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
    from converters import convert, load_checkpoint
    model = convert(load_checkpoint(path, lazy=True), source=path)
    model.save_weights(out)
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


def run(mode, arch, path, out):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
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
    args = parser.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, f"{args.arch}.safetensors")
    if not os.path.exists(path):
        t = time.perf_counter()
        make_checkpoint(args.arch, path)
        print(f"made {path} in {time.perf_counter() - t:.0f} s")
    size = os.path.getsize(path)
    out = os.path.join(args.dir, f"{args.arch}.weights.h5")
    results = {}
    for mode in ("ours", "timm"):
        runs = [run(mode, args.arch, path, out) for _ in range(args.repeats)]
        results[mode] = dict(seconds=min(r["seconds"] for r in runs), peak_rss=min(r["peak_rss"] for r in runs))
    print(f"{args.arch}: checkpoint {size / 1e9:.2f} GB; {os.cpu_count()} CPUs")
    for mode, r in results.items():
        print(f"  {mode:<5} {r['seconds']:6.1f} s   peak RSS {r['peak_rss'] / 1e9:5.2f} GB = {r['peak_rss'] / size:.2f}x file")
    print(f"  time ratio ours/timm: {results['ours']['seconds'] / results['timm']['seconds']:.2f}")


if __name__ == "__main__":
    main()
