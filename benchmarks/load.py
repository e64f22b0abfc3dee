"""New process -> first logits: `load_pretrained` from its warm cache against timm's pretrained create.

Random-weight checkpoints are served by the fake Hub of `tests/hub_server.py`,
started here, as `timm/<tag>` repos with `model.safetensors`. Both sides start
warm: timm's download sits in huggingface_hub's cache, our conversion in the
convnext_hub cache (the first-load times that fill them are printed too). Each
measurement is a fresh interpreter, timed from its spawn to its first logits on
one 224x224 image; the median of `--runs` is reported, with the child's phases
(imports, create + load, first forward) and its peak RSS.

    python benchmarks/load.py                                          # convnext_tiny
    python benchmarks/load.py --models convnext_tiny convnextv2_huge   # + the 2.6 GB one (minutes)

`--backend` picks the Keras backend of the children (default: Keras' configured one).
"""
import argparse
import json
import math
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

OURS = """
import json, resource, sys, time
import keras
import numpy as np
from convnext_hub.hub import load_pretrained
imported = time.time()
model = load_pretrained(sys.argv[1])
loaded = time.time()
logits = keras.ops.convert_to_numpy(model(np.zeros((1, 224, 224, 3), np.float32), training=False))
done = time.time()
print(json.dumps({"imported": imported, "loaded": loaded, "done": done, "shape": list(logits.shape),
                  "finite": bool(np.isfinite(logits).all()), "torch_imported": "torch" in sys.modules,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

TIMM = """
import json, resource, sys, time
import torch, timm
imported = time.time()
model = timm.create_model(sys.argv[1], pretrained=True).eval()
loaded = time.time()
with torch.no_grad():
    logits = model(torch.zeros(1, 3, 224, 224)).numpy()
done = time.time()
print(json.dumps({"imported": imported, "loaded": loaded, "done": done, "shape": list(logits.shape),
                  "finite": bool(logits.size and abs(logits).max() < float("inf")), "torch_imported": True,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def random_tensor(rng, key, shape):
    """Plausible random values: weights ~ N(0, 1/fan_in), 1-D norm scales ~ 1, other vectors small."""
    if len(shape) >= 2:
        return (rng.standard_normal(shape, dtype=np.float32) / math.sqrt(math.prod(shape[1:]))).astype(np.float32)
    base = 1.0 if key.endswith(".weight") and ".grn." not in key else 0.0
    return (base + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)


def write_random_safetensors(arch, num_classes, path, seed=0):
    """A timm-keyed float32 safetensors file of random weights, one tensor in memory at a time.

    Shapes come from timm's model built on the meta device (no memory for weights).
    """
    import timm
    import torch

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in timm.create_model(arch, num_classes=num_classes).state_dict().items()}
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = 4 * math.prod(shape)
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for key, shape in shapes.items():
            f.write(random_tensor(rng, key, shape).tobytes())
    return path


def run_child(code, name, env):
    """Spawn a fresh interpreter running `code`; seconds from spawn to each phase, plus its report."""
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code, name], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"child for {name} failed:\n{out.stderr[-3000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["finite"], f"{name}: non-finite logits"
    return {
        "total": report["done"] - start,
        "import": report["imported"] - start,
        "load": report["loaded"] - report["imported"],
        "forward": report["done"] - report["loaded"],
        "peak_rss_mb": report["peak_rss_mb"],
        "torch_imported": report["torch_imported"],
    }


def median_run(runs):
    return {k: statistics.median(r[k] for r in runs) if k != "torch_imported" else any(r[k] for r in runs)
            for k in runs[0]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["convnext_tiny"], help="registry names")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", help="KERAS_BACKEND of the children")
    parser.add_argument("--workdir", help="where the fake Hub, the HF cache and our cache live (default: a temp dir)")
    args = parser.parse_args(argv)

    import pytest  # noqa: F401  (tests.hub_server needs it)

    import checkpoints
    from tests.hub_server import LocalHub, configure_hub_env

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="convnext_hub-bench-"))
    mp = pytest.MonkeyPatch()
    with LocalHub(workdir / "hub_store") as hub:
        configure_hub_env(mp, hub.endpoint, workdir / "hf_home" / "hub")
        env = {**os.environ, "CONVNEXT_HUB_CACHE": str(workdir / "convnext_hub"), "PYTHONPATH": str(REPO_ROOT),
               "TF_CPP_MIN_LOG_LEVEL": "3"}
        if args.backend:
            env["KERAS_BACKEND"] = args.backend
        rows = []
        for name in args.models:
            entry = checkpoints.resolve(name)
            t0 = time.time()
            source = write_random_safetensors(
                entry["architecture"], entry["num_classes"], workdir / "source.safetensors")
            made = time.time() - t0
            size_mb = source.stat().st_size / 1e6
            hub.add_commit(entry["hf_hub_id"], {"model.safetensors": source, "config.json": "{}"})
            source.unlink()
            timm_first = run_child(TIMM, entry["name"], env)  # downloads into huggingface_hub's cache
            ours_first = run_child(OURS, name, env)  # converts from that cache into ours
            timed = {"ours": [], "timm": []}
            for _ in range(args.runs):
                timed["ours"].append(run_child(OURS, name, env))
                timed["timm"].append(run_child(TIMM, entry["name"], env))
            rows.append((entry["name"], size_mb, made, timm_first, ours_first,
                         median_run(timed["ours"]), median_run(timed["timm"])))
            shutil.rmtree(workdir / "hf_home" / "hub", ignore_errors=True)  # disk: the big files exist 3 times
            shutil.rmtree(workdir / "convnext_hub", ignore_errors=True)
    mp.undo()
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    report(rows, args, env.get("KERAS_BACKEND", "configured default"))


def report(rows, args, backend):
    print(f"\nnew process -> first logits (1x224x224), median of {args.runs}; Keras backend: {backend}; "
          f"{os.cpu_count()} CPUs")
    print(f"{'checkpoint':42} {'side':5} {'total s':>8} {'import':>7} {'load':>7} {'forward':>8} {'peak MB':>8}")
    for name, size_mb, made, timm_first, ours_first, ours, timm in rows:
        for side, r in (("ours", ours), ("timm", timm)):
            print(f"{name:42} {side:5} {r['total']:8.2f} {r['import']:7.2f} {r['load']:7.2f} {r['forward']:8.2f} "
                  f"{r['peak_rss_mb']:8.0f}")
        print(f"  timm / ours (total): {timm['total'] / ours['total']:.2f}x; load phase only: "
              f"{timm['load'] / ours['load']:.2f}x; torch imported by ours: {ours['torch_imported']}")
        print(f"  checkpoint {size_mb:.0f} MB, written in {made:.1f} s; first loads (cold caches): timm download + "
              f"create {timm_first['total']:.2f} s, ours convert from HF cache {ours_first['total']:.2f} s "
              f"(load phase {ours_first['load']:.2f} s, peak {ours_first['peak_rss_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
