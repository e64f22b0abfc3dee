"""Deployment speed on CPU: our exports in their runtimes against timm, side by side in one process.

Runtimes: timm eager (torch), timm's own ONNX export (`torch.onnx.export` of the
same weights) and timm's OpenVINO conversion, against our Keras (TensorFlow
backend) exports run in onnxruntime, OpenVINO, LiteRT (XNNPack) and TF
SavedModel, and the int8 variants (Keras `quantize("int8")` exported as a TF
SavedModel; LiteRT dynamic-range int8). Every runner is timed once per round, in turn, so
all see the same machine state; the figure is the median over rounds. Each
artifact's logits are also checked against timm's on the timed batch.

    python benchmarks/deploy.py            # convnext_tiny, convnextv2_tiny; 224x224; batch 1 and 8
    python benchmarks/deploy.py --quick    # atto models, 64x64, few rounds: checks the script works

Writes `benchmarks/results/deploy.json` and `deploy.png` (ratios to timm eager).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import timm  # noqa: E402,F401
import torch  # noqa: E402  torch and timm before TensorFlow: the other order crashes some Linux machines

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import report  # noqa: E402

OUR_FORMATS = ("onnx", "openvino", "litert", "saved_model")
BASELINE = "timm eager"


def _timm_onnx(reference, path, size):
    """timm's own ONNX export: `torch.onnx.export` with a dynamic batch, as timm's users make it."""
    example = torch.zeros(1, 3, size, size)
    torch.onnx.export(
        reference,
        (example,),
        path,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}},
        dynamo=False,
    )
    return path


def _timm_openvino(reference, size):
    """timm's module converted by OpenVINO's PyTorch frontend, compiled in float32; None where it fails."""
    import openvino as ov

    try:
        converted = ov.convert_model(reference, example_input=torch.zeros(1, 3, size, size))
        return ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    except Exception as error:  # a conversion failure is a result to report, not a crash
        print(f"  timm -> OpenVINO failed: {type(error).__name__}: {str(error)[:200]}")
        return None


def _runners(arch, size, folder):
    """`{name: (callable(batch_nhwc) -> logits, layout)}` for every runtime, and the timm module."""
    import numpy as np

    from converters import convert
    from convnext_hub import export
    from convnext_hub.convert.randomize import randomize_

    reference = randomize_(timm.create_model(arch), 0).eval()
    state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    model = convert(state, arch=arch)
    paths = export.export(model, folder / "float32", OUR_FORMATS, image_size=(size, size))
    paths["litert_int8"] = export.export(model, folder / "float32", ["litert_int8"], image_size=(size, size))[
        "litert_int8"
    ]
    model.quantize("int8")
    paths["saved_model_int8"] = export.export(model, folder / "int8", ["saved_model"], image_size=(size, size))[
        "saved_model"
    ]

    def nchw(x):
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def timm_eager(x):
        with torch.inference_mode():
            return reference(nchw(x)).numpy()

    timm_session = _ort_session(_timm_onnx(reference, str(folder / "timm.onnx"), size))
    runners = {
        BASELINE: timm_eager,
        "timm onnxruntime": lambda x: timm_session.run(None, {"images": nchw(x).numpy()})[0],
    }
    timm_ov = _timm_openvino(reference, size)
    if timm_ov is not None:
        runners["timm openvino"] = lambda x: timm_ov(nchw(x).numpy())[0]
    for name, fmt, path in [
        ("ours onnxruntime", "onnx", paths["onnx"]),
        ("ours openvino", "openvino", paths["openvino"]),
        ("ours litert", "litert", paths["litert"]),
        ("ours saved_model", "saved_model", paths["saved_model"]),
        ("ours saved_model int8", "saved_model", paths["saved_model_int8"]),
        ("ours litert int8", "litert", paths["litert_int8"]),
    ]:
        runners[name] = _loaded(fmt, path)
    return runners


def _ort_session(path):
    """An onnxruntime CPU session whose idle threads sleep: by default they spin after each run, taking
    the cores from whichever runner is timed next (both ONNX files get the same settings)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def _loaded(fmt, path):
    """A runner holding the artifact loaded once in its runtime (loading is not what is timed)."""
    import numpy as np

    path = os.fspath(path)
    if fmt == "onnx":
        session = _ort_session(path)
        return lambda x: session.run(None, {session.get_inputs()[0].name: x})[0]
    if fmt == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return lambda x: compiled(x)[0]
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path, num_threads=os.cpu_count())
        (name,) = interpreter.get_signature_runner().get_input_details()
        runner = interpreter.get_signature_runner()
        return lambda x: next(iter(runner(**{name: x}).values()))
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    return lambda x: np.asarray(loaded.serve(tf.constant(x)))


def _time(runners, x, rounds):
    """Median seconds per call of each runner, timed in turn each round after one warm-up call."""
    for run in runners.values():
        run(x)
    durations = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run(x)
            durations[name].append(time.perf_counter() - start)
    return {name: sorted(d)[len(d) // 2] for name, d in durations.items()}


def measure(arch, size, batches, rounds):
    """Images/s, ratio to timm eager and max|d| / max|timm| of every runtime, per batch size."""
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        runners = _runners(arch, size, Path(folder))
        rows = []
        for batch in batches:
            x = np.random.RandomState(batch).rand(batch, size, size, 3).astype("float32")
            expected = runners[BASELINE](x)
            errors = {
                n: float(np.abs(np.asarray(r(x)) - expected).max() / np.abs(expected).max()) for n, r in runners.items()
            }
            seconds = _time(runners, x, rounds)
            for name, s in seconds.items():
                rows.append(
                    {
                        "model": arch,
                        "size": size,
                        "batch": batch,
                        "runtime": name,
                        "images_per_s": batch / s,
                        "vs_timm_eager": seconds[BASELINE] / s,
                        "vs_timm_onnxruntime": seconds["timm onnxruntime"] / s,
                        "max_rel_diff_vs_timm": errors[name],
                    }
                )
                print(
                    f"  {arch} b{batch} {name:<24} {batch / s:8.1f} img/s  {seconds[BASELINE] / s:5.2f}x timm "
                    f"eager  {seconds['timm onnxruntime'] / s:5.2f}x timm ORT  max|d| {errors[name]:.1e}",
                    flush=True,
                )
    return rows


def chart(rows, name):
    """Bars: each runtime's speed as a ratio to timm eager, one group per model and batch."""
    groups = {}
    for r in rows:
        groups.setdefault(f"{r['model']}\nbatch {r['batch']}", {})[r["runtime"]] = r["vs_timm_eager"]
    title = f"CPU inference, images/s / timm eager's (float32 unless int8; {rows[0]['size']}x{rows[0]['size']})"
    return report.bar_chart(name, title, groups, "ratio to timm eager", reference=1.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="atto models, 64x64, batch 1 and 2, 3 rounds")
    parser.add_argument("--models", nargs="+", default=["convnext_tiny", "convnextv2_tiny"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    if args.quick:
        args.models, args.size, args.batches, args.rounds = ["convnext_atto", "convnextv2_atto"], 64, [1, 2], 3
    torch.set_num_threads(os.cpu_count())
    rows = [row for arch in args.models for row in measure(arch, args.size, args.batches, args.rounds)]
    name = "deploy_quick" if args.quick else "deploy"
    print(f"wrote {report.write_json(name, {'rows': rows})} and {chart(rows, name)}")


if __name__ == "__main__":
    main()
