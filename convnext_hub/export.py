"""Deployment: Keras' own exporters, each artifact run in the runtime that will serve it, checked against timm.

`export` writes ONNX, LiteRT, TF SavedModel and OpenVINO artifacts with
`model.export(path, format=...)`; `run_artifact` loads one in its own runtime
(onnxruntime, ai-edge-litert's interpreter, `tf.saved_model.load`, OpenVINO) and
returns its outputs; `check_artifacts` compares those outputs with timm's through
`convnext_hub.convert.verification`, the project's one comparison with timm.

The export tools are the optional extra `pip install "convnext_hub[export]"`;
without them `export` names the package to install.
"""

import importlib.util
import logging
import os
from pathlib import Path

import keras
import numpy as np

from convnext_hub.convert import verification

logger = logging.getLogger("convnext_hub")

FORMATS = ("onnx", "litert", "saved_model", "openvino")
# Formats `export` also writes: LiteRT with dynamic-range int8 weights (its converter's `Optimize.DEFAULT`).
EXTRA_FORMATS = ("litert_int8",)
INSTALL_HINT = 'pip install "convnext_hub[export]"'

_KERAS_FORMAT = {
    "onnx": "onnx",
    "litert": "litert",
    "litert_int8": "litert",
    "saved_model": "tf_saved_model",
    "openvino": "openvino",
}
_FILE_NAME = {
    "onnx": "model.onnx",
    "litert": "model.tflite",
    "litert_int8": "model_int8.tflite",
    "saved_model": "saved_model",
    "openvino": "model.xml",
}
# What OpenVINO's `compile_model` must be given for float32 results. On a CPU with bf16 instructions
# (AVX512_BF16, AMX) OpenVINO infers in bf16 unless told otherwise, ~1e-2 x max|timm| off, and no part of the
# model file tells it otherwise (measured with OpenVINO 2026.4): its CPU plugin takes only KV-cache and
# dynamic-quantization settings from a model's `runtime_options` (an INFERENCE_PRECISION_HINT there is ignored),
# and per-node "precise" marks keep convolutions and element-wise ops in f32 but not the FullyConnected nodes it
# makes of the Dense layers' MatMuls (still ~5e-3 off). So `export` says it in its log; `run_artifact` passes it.
OPENVINO_FLOAT32 = {"INFERENCE_PRECISION_HINT": "f32"}
# Python module -> the package that provides it.
_PACKAGES = {
    "tensorflow": "tensorflow",
    "tf2onnx": "tf2onnx",
    "onnxscript": "onnxscript",
    "onnxruntime": "onnxruntime",
    "ai_edge_litert": "ai-edge-litert",
    "openvino": "openvino",
}
# What exporting needs, per backend and format: the modules the exporter imports, or why it cannot be done.
_NO_LITERT = "Keras exports LiteRT from the TensorFlow and torch backends only"
_LITERT_TORCH = (
    "needs the litert-torch converter, which is not in the export extra (it would downgrade "
    "typing-extensions and pydantic) and is untested here"
)
_JAX2TF = "Keras goes through jax2tf, and JAX 0.10's jax2tf writes only native StableHLO (XlaCallModule), which {}"
_EXPORTERS = {
    "tensorflow": {
        "onnx": ["tf2onnx", "onnxruntime"],
        "litert": ["ai_edge_litert"],
        "litert_int8": ["ai_edge_litert"],
        "saved_model": [],
        "openvino": ["openvino"],
    },
    "jax": {
        "onnx": "jax2onnx 0.17 does not finish converting these models (its conversion of convnextv2_atto "
        "at a fixed 64x64 size never ends)",
        "saved_model": _JAX2TF.format("TensorFlow 2.21 cannot read back (vhlo.composite_v2)"),
        "openvino": _JAX2TF.format("OpenVINO's TensorFlow frontend cannot convert"),
        "litert": _NO_LITERT,
        "litert_int8": _NO_LITERT,
    },
    "torch": {
        "onnx": ["onnxscript", "onnxruntime"],
        "openvino": "Keras traces the model with torch.jit.trace, whose check fails on these models "
        "(graphs differ across invocations)",
        "saved_model": "Keras' torch SavedModel route needs torch_xla, which is not installed here; "
        "with a dynamic batch it also fails in torch.export's dynamic shapes",
        "litert": _LITERT_TORCH,
        "litert_int8": _LITERT_TORCH,
    },
}


class MissingExportTool(ImportError):
    """An export or runtime package is not installed; the message names it."""


# Formats that cannot hold a model quantized by Keras (`model.quantize("int8")`), per backend, and why.
_QUANTIZED_GAPS = {
    "tensorflow": {
        "onnx": "Keras' int8 Dense ends in tf.nn.gelu, whose erfc tf2onnx cannot convert (invalid ONNX graph)",
        "litert": "Keras' int8 Dense is a raw int8 matmul, which the LiteRT converter cannot map to a quantized "
        "FULLY_CONNECTED; export the float32 model as litert_int8 instead",
        "litert_int8": "the LiteRT converter quantizes a float32 model itself: export the float32 model",
        "openvino": "OpenVINO converts Keras' int8 graph but its logits are ~0.9 x max off Keras' own, and its "
        "int8 quantizer's custom gradients surface as extra outputs",
    },
}


def support(fmt, backend=None, model=None):
    """`None` when `fmt` can be exported on `backend` (default: the current one), else why not.

    With `model`, also whether that model (int8-quantized or not) fits the format.
    """
    backend = backend or keras.backend.backend()
    if fmt not in _KERAS_FORMAT:
        raise ValueError(f"Unknown export format. Received: fmt={fmt!r}; accepted: {FORMATS + EXTRA_FORMATS}")
    needs = _EXPORTERS.get(backend, {}).get(fmt, f"Keras does not export {fmt} from the {backend} backend")
    if isinstance(needs, str):
        return needs
    quantized = model is not None and any(layer.quantization_mode for layer in _all_layers(model))
    return _QUANTIZED_GAPS.get(backend, {}).get(fmt) if quantized else None


def require(fmt, backend=None, model=None):
    """Raises `MissingExportTool` naming the package to install when `fmt`'s exporter or runtime is absent.

    Raises `ValueError` with the reason when the format cannot be exported here at all.
    """
    backend = backend or keras.backend.backend()
    reason = support(fmt, backend, model)
    if reason:
        raise ValueError(f"Cannot export {fmt} on the {backend} backend: {reason}.")
    missing = [_PACKAGES[m] for m in _EXPORTERS[backend][fmt] if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExportTool(f"Exporting {fmt} on the {backend} backend needs {', '.join(missing)}: {INSTALL_HINT}")


def input_signature(model, image_size=None):
    """The exported input: float32 NHWC named `images`, batch dynamic, height and width dynamic unless given.

    `image_size` (height, width) fixes them; a model built for a fixed size keeps
    it. On torch everything is fixed, batch 1 included: Keras' torch ONNX route
    with dynamic axes (TorchScript) fails in Keras' LayerNormalization, the static
    one (torch.export) works.
    """
    height, width = image_size or model.input_shape[1:3]
    backend = keras.backend.backend()
    if backend == "torch" and (height is None or width is None):
        raise ValueError(
            f"On the {backend} backend the exported size is fixed: give `image_size=(height, width)`. "
            f"Received: image_size={image_size!r}"
        )
    batch = 1 if backend == "torch" else None
    return [keras.InputSpec(shape=(batch, height, width, 3), dtype="float32", name="images")]


def export(model, folder, formats=FORMATS, *, image_size=None, verbose=False):
    """Writes `model` in each of `formats` into `folder` with Keras' `model.export`; returns `{format: path}`.

    An OpenVINO model is float32, but OpenVINO computes it in bf16 on CPUs with
    bf16 instructions unless `compile_model` is given `OPENVINO_FLOAT32`
    (nothing in the model file can ask for it): the log says so.

    Args:
        model: a float32 ConvNeXt (int8-quantized Dense layers allowed).
        folder: output folder (created).
        formats: names from `FORMATS` and `EXTRA_FORMATS`.
        image_size: (height, width) to fix; by default they stay dynamic. A fixed size
            gives LiteRT a graph XNNPack takes whole (the export tests check which ops it delegates).
        verbose: let the exporters print.

    Raises:
        MissingExportTool: an exporter is not installed (the message names it).
        ValueError: a format Keras cannot export from this backend, or a non-float32 model.
    """
    for fmt in formats:
        require(fmt, model=model)
    _check_float32(model)
    signature = input_signature(model, image_size)
    _ensure_called(model, signature[0].shape)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in formats:
        path = folder / _FILE_NAME[fmt]
        model.export(
            os.fspath(path),
            format=_KERAS_FORMAT[fmt],
            verbose=verbose,
            input_signature=signature,
            **_export_kwargs(fmt),
        )
        paths[fmt] = path
        if fmt == "openvino":
            logger.warning(
                "%s: compile it with core.compile_model(path, device, %r) for float32 results: with OpenVINO's "
                "default precision, CPUs with bf16 instructions (AVX512_BF16, AMX) infer in bf16, ~1e-2 x "
                "max|logit| off",
                path,
                OPENVINO_FLOAT32,
            )
    return paths


def _check_float32(model):
    policies = {layer.dtype_policy.compute_dtype for layer in model.layers if layer.weights}
    if policies != {"float32"}:
        raise ValueError(
            "Exporters write float32 graphs: build the model with dtype='float32'. "
            f"Received: compute dtypes {sorted(policies)}"
        )


def _all_layers(layer):
    """`layer` and every layer inside it, nested models included (public `layers` attributes only)."""
    yield layer
    for inner in getattr(layer, "layers", ()):
        yield from _all_layers(inner)


def _ensure_called(model, shape):
    """Keras exports only a model that has run once; run it on one small image (cheap, and harmless
    where it has run: inference changes no state)."""
    height, width = (side or 64 for side in shape[1:3])
    model(np.zeros((1, height, width, 3), "float32"), training=False)


def _export_kwargs(fmt):
    if fmt == "litert_int8":
        import tensorflow as tf

        return {"optimizations": [tf.lite.Optimize.DEFAULT]}
    return {}


# --------------------------------------------------------------------------- running artifacts


def run_artifact(fmt, path, images_nhwc):
    """The outputs of the artifact at `path`, loaded by its own runtime, for NHWC float32 `images_nhwc`.

    Returns a list of numpy arrays in the model's output order.
    """
    images = np.ascontiguousarray(images_nhwc, dtype=np.float32)
    runners = {
        "onnx": _run_onnx,
        "litert": _run_litert,
        "litert_int8": _run_litert,
        "saved_model": _run_saved_model,
        "openvino": _run_openvino,
    }
    if fmt not in runners:
        raise ValueError(f"Unknown export format. Received: fmt={fmt!r}; accepted: {sorted(runners)}")
    return [np.asarray(y) for y in runners[fmt](os.fspath(path), images)]


def _import(module):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExportTool(
            f"Running this artifact needs {_PACKAGES.get(module, module)}: {INSTALL_HINT}"
        ) from error


def _run_onnx(path, images):
    ort = _import("onnxruntime")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})


def _run_litert(path, images):
    interpreter = _import("ai_edge_litert.interpreter").Interpreter(model_path=path)
    runner = interpreter.get_signature_runner()
    (name,) = runner.get_input_details()
    outputs = runner(**{name: images})  # resizes the input and allocates
    return [outputs[key] for key in sorted(outputs, key=_output_number)]


def _output_number(name):
    """`output_12` -> 12: Keras names LiteRT outputs by position, and a dict sorts them as strings."""
    return int(name.rsplit("_", 1)[-1])


def _run_saved_model(path, images):
    tf = _import("tensorflow")
    loaded = tf.saved_model.load(path)  # held while `serve` runs: it references the loaded variables
    outputs = loaded.serve(tf.constant(images))
    return [y.numpy() for y in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]


def _run_openvino(path, images):
    ov = _import("openvino")
    compiled = ov.Core().compile_model(path, "CPU", OPENVINO_FLOAT32)  # see OPENVINO_FLOAT32
    results = compiled(images)
    return [results[output] for output in compiled.outputs]


# --------------------------------------------------------------------------- checking against timm


def compare_outputs(outputs, model, reference, images_nhwc, *, head_loaded=True):
    """A `verification.Report` of an artifact's `outputs` for `images_nhwc` against timm module `reference`.

    `model` is the Keras model that was exported: its feature maps
    (`features_only`) are compared with timm's stage maps, its logits with timm's
    head when `verification` says they are comparable.
    """
    expected_stages, expected_head = verification.timm_outputs(reference, np.asarray(images_nhwc, np.float32))
    report = verification.Report(input_shape=tuple(np.shape(images_nhwc)))
    if model.features_only:
        names = [verification.STAGE_NAMES[i] for i in model.out_indices]
        expected = [expected_stages[i] for i in model.out_indices]
    else:
        report.skipped = verification.why_logits_not_compared(model, reference, head_loaded)
        names, expected = ([], []) if report.skipped else (["logits"], [expected_head])
    if len(outputs) != len(model.outputs):
        raise ValueError(f"The artifact returned {len(outputs)} outputs; the model has {len(model.outputs)}")
    report.comparisons = [verification.compare_output(n, a, e) for n, a, e in zip(names, outputs, expected)]
    return report


def check_artifacts(paths, model, reference, images_nhwc, *, head_loaded=True):
    """`{format: verification.Report}`: each artifact of `paths` (from `export`) run in its own runtime."""
    return {
        fmt: compare_outputs(
            run_artifact(fmt, path, images_nhwc), model, reference, images_nhwc, head_loaded=head_loaded
        )
        for fmt, path in paths.items()
    }


def size_on_disk(path):
    """Bytes of an artifact: a file, or an OpenVINO `.xml` with its `.bin`, or a SavedModel folder."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    weights = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return path.stat().st_size + (weights.stat().st_size if weights and weights.exists() else 0)
