"""Exported artifacts, each run in its own runtime, equal timm's outputs; LiteRT stays on builtins; int8.

Every timm parameter is randomized, converted, exported with `convnext_hub.export`
(Keras' own `model.export`), loaded by the artifact's runtime (onnxruntime,
ai-edge-litert, `tf.saved_model.load`, OpenVINO) and compared with timm through
`convnext_hub.convert.verification`: max|d| <= 1e-5 * max|timm|, logits and feature maps.
Batch 1 and 3; two image sizes where the artifact's height and width are dynamic.
Formats the current backend cannot export are skipped with the reason `export.support` gives.
"""

import keras
import numpy as np
import pytest

from converters import convert
from convnext_hub import export
from tests.checkpoint_factory import random_timm_model, randomize_, state_dict_numpy
from tests.conftest import BACKEND
from tests.litert_graph import litert_operators, xnnpack_delegation

# Every layer kind of the 28 architectures passes through every exporter, in three models: convnextv2_atto (GRN,
# LayerNorm, the MLP as 1x1 convs, the patch stem, the pooled head) and two small geometries that gather the
# rest (a small size exports in seconds on the 2-core, 24 GB test machine; convnext_large_mlp's 200M parameters
# took tf2onnx past 23 GB):
# - "ols_rms_hnf": layer scale, the overlapping tiered stem of `_ols`, RMSNorm of `_rms`, and convnext_tiny_hnf's
#   head (norm on the feature map, then pool);
# - "linear_mlp_head": layer scale with LayerNorm, the MLP as Dense layers (the larger models' layout), and
#   convnext_large_mlp's head (pre-logits Dense + GELU before the classifier).
REPRESENTATIVE = ["convnextv2_atto", "ols_rms_hnf", "linear_mlp_head"]
SMALL_GEOMETRY = dict(depths=(1, 1, 2, 1), dims=(16, 24, 40, 56))
SMALL_GEOMETRIES = {
    "ols_rms_hnf": dict(
        SMALL_GEOMETRY, stem_type="overlap_tiered", norm_layer="rmsnorm2d", head_norm_first=True, conv_mlp=True
    ),
    "linear_mlp_head": dict(SMALL_GEOMETRY, head_hidden_size=64),
}
NORM_HINTS = {"ols_rms_hnf": {"norm": "rmsnorm2d"}}  # norms without bias: RMSNorm or SimpleNorm, weights alike
# Not marked slow: convnextv2_atto as a classifier in every format, and as features in ONNX; the rest is slow
# (each export takes seconds).
FAST = {("convnextv2_atto", "classifier", fmt) for fmt in ("onnx", "litert", "saved_model", "openvino")} | {
    ("convnextv2_atto", "features", "onnx")
}
KINDS = {"classifier": {}, "features": {"features_only": True}}
FIXED_SIZE = (64, 64)
SIZES = [(64, 64), (67, 45)]
NUM_CLASSES = 17


def _cases():
    return [
        case if case in FAST else pytest.param(*case, marks=pytest.mark.slow)
        for case in ((arch, kind, fmt) for arch in REPRESENTATIVE for kind in KINDS for fmt in export.FORMATS)
    ]


def _fixed_size():
    """The size artifacts are exported at: dynamic (None) where the backend allows it."""
    return None if BACKEND == "tensorflow" else FIXED_SIZE


def _inputs():
    """Batches the artifacts must take: batch 1 and 3, and a second, odd size where sizes are dynamic."""
    batches = [1] if BACKEND == "torch" else [1, 3]  # torch artifacts are traced at batch 1
    sizes = SIZES if _fixed_size() is None else [FIXED_SIZE]
    return [
        np.random.RandomState(i).standard_normal((b, h, w, 3)).astype("float32")
        for i, (b, (h, w)) in enumerate((b, s) for b in batches for s in sizes)
    ]


def _random_reference(arch):
    if arch not in SMALL_GEOMETRIES:
        return random_timm_model(arch, num_classes=NUM_CLASSES, seed=1)
    from timm.models.convnext import ConvNeXt

    return randomize_(ConvNeXt(num_classes=NUM_CLASSES, **SMALL_GEOMETRIES[arch]), seed=1).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`get(arch, kind, fmt)` -> (model, timm reference, artifact path); each model converted once."""
    models, paths = {}, {}

    def get(arch, kind, fmt):
        if (arch, kind) not in models:
            reference = _random_reference(arch)
            known = arch if arch not in SMALL_GEOMETRIES else None
            model = convert(state_dict_numpy(reference), arch=known, **KINDS[kind], **NORM_HINTS.get(arch, {}))
            models[arch, kind] = model, reference
        model, reference = models[arch, kind]
        if (arch, kind, fmt) not in paths:
            folder = tmp_path_factory.mktemp(f"{arch}_{kind}_{fmt}")
            paths[arch, kind, fmt] = export.export(model, folder, [fmt], image_size=_fixed_size())[fmt]
        return model, reference, paths[arch, kind, fmt]

    return get


@pytest.mark.parametrize("arch,kind,fmt", _cases())
def test_artifact_equals_timm(exported, arch, kind, fmt):
    """Logits (classifier) or the four stage maps (features_only), from the artifact's own runtime."""
    reason = export.support(fmt)
    if reason:
        pytest.skip(f"{fmt} on {BACKEND}: {reason}")
    model, reference, path = exported(arch, kind, fmt)
    for images in _inputs():
        report = export.check_artifacts({fmt: path}, model, reference, images)[fmt]
        assert len(report.comparisons) == (4 if kind == "features" else 1), report.lines()
        assert report.passed, f"{arch} {kind} {fmt} {images.shape}:\n" + "\n".join(report.lines())


def test_unsupported_formats_say_why():
    """Every format is either exportable here or refused with its reason, before anything is written."""
    model = keras.Model()  # never reached: the format is refused first
    for fmt in export.FORMATS + export.EXTRA_FORMATS:
        reason = export.support(fmt)
        if reason:
            with pytest.raises(ValueError, match="Cannot export") as error:
                export.export(model, "unused", [fmt])
            assert reason in str(error.value)


@pytest.mark.backend_independent
def test_missing_tool_names_the_package(monkeypatch):
    """Without an exporter installed, the error names the package and the extra to install."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a))
    with pytest.raises(export.MissingExportTool, match=r'tf2onnx: pip install "convnext_hub\[export\]"'):
        export.require("onnx", "tensorflow")


@pytest.mark.backend_independent
def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="Unknown export format"):
        export.support("pickle")


# --------------------------------------------------------------------------- LiteRT graph


@pytest.fixture(scope="module")
def litert_files(tmp_path_factory):
    """convnextv2_atto as LiteRT with dynamic and with fixed height / width (TensorFlow backend)."""
    if export.support("litert"):
        pytest.skip(f"litert on {BACKEND}: {export.support('litert')}")
    model = convert(state_dict_numpy(random_timm_model("convnextv2_atto", num_classes=NUM_CLASSES, seed=2)))
    return {
        size: export.export(model, tmp_path_factory.mktemp(f"litert_{size}"), ["litert"], image_size=size)["litert"]
        for size in (None, FIXED_SIZE)
    }


def test_litert_uses_builtin_ops_only(litert_files):
    """No Flex (SELECT_TF_OPS) or other custom op: the plain LiteRT runtime runs the file."""
    for path in litert_files.values():
        ops = litert_operators(path)
        assert not ops["custom"], f"custom ops in {path.name}: {dict(ops['custom'])}"
        assert {"GELU", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= set(ops["builtin"])


def test_litert_fixed_size_runs_whole_on_xnnpack(litert_files):
    """At a fixed size every node is delegated to XNNPack, in one partition."""
    inside, outside, partitions = xnnpack_delegation(litert_files[FIXED_SIZE], (1, *FIXED_SIZE, 3))
    assert not outside, f"not delegated: {dict(outside)}"
    assert partitions == 1 and inside["FULLY_CONNECTED"] and inside["DEPTHWISE_CONV_2D"]


def test_litert_dynamic_size_leaves_only_shape_arithmetic_off_xnnpack(litert_files):
    """With dynamic height / width, only the MLP's run-time reshapes (shape arithmetic) stay off XNNPack."""
    inside, outside, partitions = xnnpack_delegation(litert_files[None], (1, *FIXED_SIZE, 3))
    assert set(outside) <= {"SHAPE", "STRIDED_SLICE", "CONCATENATION", "RESHAPE"}, dict(outside)
    assert inside["FULLY_CONNECTED"] and inside["GELU"] and partitions > 1


# --------------------------------------------------------------------------- ONNX graph


def _expected_fusions(model):
    """Fused kernels onnxruntime must make of `model`: one per norm layer and one per GELU (in a layer or a Dense)."""
    from convnext_hub.layers import GELU, Dense, LayerNorm, RMSNorm, SimpleNorm

    counts = {"LayerNormalization": 0, "SimplifiedLayerNormalization": 0, "Gelu": 0}
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, LayerNorm):
            counts["LayerNormalization"] += 1
        elif isinstance(layer, RMSNorm) and not isinstance(layer, SimpleNorm):
            counts["SimplifiedLayerNormalization"] += 1
        elif isinstance(layer, GELU) or (isinstance(layer, Dense) and layer.activation is keras.activations.gelu):
            counts["Gelu"] += 1
    return counts


@pytest.mark.parametrize(
    "arch", ["convnextv2_atto", pytest.param("convnext_atto_rms", marks=pytest.mark.slow), "convnext_zepto_rms_ols"]
)
def test_onnx_norms_and_gelu_fuse_in_onnxruntime(arch, tmp_path):
    """Every LayerNorm, RMSNorm and GELU of the exported graph becomes one onnxruntime kernel (as in timm's
    own ONNX export), no erf or power is left unfused, and the artifact still equals timm (the stem GELU of
    `_ols` models included: tf.nn.gelu's erfc used to make a graph onnxruntime rejects)."""
    reason = export.support("onnx")
    if reason or BACKEND != "tensorflow":
        pytest.skip(f"onnx on {BACKEND}: {reason or 'the fused patterns are written by the TensorFlow path'}")
    import onnx
    import onnxruntime as ort

    reference = random_timm_model(arch, num_classes=NUM_CLASSES, seed=3)
    model = convert(state_dict_numpy(reference))
    path = export.export(model, tmp_path, ["onnx"])["onnx"]
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    expected = _expected_fusions(model)
    fused = {op: ops.count(op) + (ops.count("BiasGelu") if op == "Gelu" else 0) for op in expected}
    assert fused == expected and expected["Gelu"] > 0, (fused, expected)
    assert not {"Erf", "Pow"} & set(ops), sorted(set(ops))
    report = export.check_artifacts({"onnx": path}, model, reference, _inputs()[1])["onnx"]
    assert report.passed, "\n".join(report.lines())


@pytest.mark.parametrize("task", ["classifier", "backbone"])
def test_keras_hub_models_export_the_fused_patterns(task, tmp_path):
    """keras-hub's ConvNeXtImageClassifier and ConvNeXtBackbone, exported with their own `export`, give the
    same fused onnxruntime graph and the same outputs as the ConvNeXt they were made from."""
    if export.support("onnx") or BACKEND != "tensorflow":
        pytest.skip(f"onnx on {BACKEND}: {export.support('onnx') or 'the fused patterns are TensorFlow paths'}")
    import onnx
    import onnxruntime as ort

    from convnext_hub.keras_hub import from_model

    model = convert(state_dict_numpy(random_timm_model("convnextv2_atto", num_classes=NUM_CLASSES, seed=4)))
    keras_hub_model = from_model(model, task=task)
    images = _inputs()[1]
    expected = keras_hub_model(images)
    path = str(tmp_path / "model.onnx")
    keras_hub_model.export(
        path, format="onnx", input_signature=[keras.InputSpec(shape=(None, None, None, 3), dtype="float32")]
    )
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    fusions = _expected_fusions(keras_hub_model)
    assert {op: ops.count(op) + (ops.count("BiasGelu") if op == "Gelu" else 0) for op in fusions} == fusions
    outputs = session.run(None, {session.get_inputs()[0].name: images})
    expected = keras.tree.flatten(expected)
    assert len(outputs) == len(expected)
    for actual, wanted in zip(outputs, expected):
        wanted = keras.ops.convert_to_numpy(wanted)
        assert np.abs(actual - wanted).max() <= 1e-5 * np.abs(wanted).max()


# --------------------------------------------------------------------------- int8


def _top1_agreement(a, b):
    return float((a.argmax(-1) == b.argmax(-1)).mean())


@pytest.fixture(scope="module")
def float_and_int8(tmp_path_factory):
    """convnextv2_atto after `model.quantize("int8")`, its images, float32 and int8 logits, float32 artifacts.

    The float32 artifacts are of the formats that take the int8 model, exported before quantizing.
    """
    reference = random_timm_model("convnextv2_atto", num_classes=100, seed=3)
    images = np.random.RandomState(3).standard_normal((16, *FIXED_SIZE, 3)).astype("float32")
    model = convert(state_dict_numpy(reference))
    float_logits = keras.ops.convert_to_numpy(model(images))
    model.quantize("int8")
    formats = [f for f in export.FORMATS if export.support(f, model=model) is None]
    model = convert(state_dict_numpy(reference))
    float_paths = export.export(model, tmp_path_factory.mktemp("float32"), formats, image_size=_fixed_size())
    model.quantize("int8")
    return model, images, float_logits, keras.ops.convert_to_numpy(model(images)), float_paths


def test_int8_quantizes_every_dense(float_and_int8):
    """`model.quantize("int8")` reaches our Dense layers (Keras skips Dense subclasses unless they allow it)."""
    model, images, float_logits, int8_logits, _ = float_and_int8
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense and all(layer.quantization_mode == "int8" for layer in dense)
    error = np.abs(int8_logits - float_logits).max() / np.abs(float_logits).max()
    assert 1e-4 < error < 0.1, f"int8 max|d| = {error:.2e} x max|float32|"  # quantized, yet close
    assert _top1_agreement(int8_logits, float_logits) >= 0.9


def test_int8_model_saves_and_reloads(float_and_int8, tmp_path):
    model, images, _, int8_logits, _ = float_and_int8
    model.save(tmp_path / "int8.keras")
    reloaded = keras.saving.load_model(tmp_path / "int8.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(reloaded(images)), int8_logits)


def test_int8_model_exports(float_and_int8, tmp_path):
    """The int8 model's artifacts stay close to Keras' int8 outputs, and are under half their float32 size."""
    model, images, _, int8_logits, float_paths = float_and_int8
    if not float_paths:
        pytest.skip(f"no format takes an int8 model on {BACKEND}")
    formats = list(float_paths)
    paths = export.export(model, tmp_path, formats, image_size=_fixed_size())
    batch = images[:1] if BACKEND == "torch" else images
    for fmt in set(export.FORMATS) - set(formats):
        if export.support(fmt) is None:  # exportable in float32, not as Keras int8: refused with the reason
            with pytest.raises(ValueError, match=export.support(fmt, model=model)[:40]):
                export.export(model, tmp_path / fmt, [fmt], image_size=_fixed_size())
    for fmt, path in paths.items():
        (logits,) = export.run_artifact(fmt, path, batch)
        expected = int8_logits[: len(batch)]
        # Runtimes round and accumulate int8 products their own way (eager Keras and a served TF graph
        # differ by ~2e-2 here): the size below, not the values, tells int8 weights from float32 ones.
        error = np.abs(logits - expected).max() / np.abs(expected).max()
        assert error <= 0.05, f"{fmt}: max|d| = {error:.2e} x max|Keras int8|"
        assert _top1_agreement(logits, expected) >= 0.9
        sizes = export.size_on_disk(path), export.size_on_disk(float_paths[fmt])
        assert sizes[0] < 0.5 * sizes[1], f"{fmt}: int8 {sizes[0]} bytes, float32 {sizes[1]} bytes"


def test_litert_dynamic_range_int8(tmp_path):
    """LiteRT's own int8 (weights int8, activations float): a quarter of the size, close to float32."""
    if export.support("litert_int8"):
        pytest.skip(f"litert_int8 on {BACKEND}: {export.support('litert_int8')}")
    model = convert(state_dict_numpy(random_timm_model("convnextv2_atto", num_classes=100, seed=3)))
    paths = export.export(model, tmp_path, ["litert", "litert_int8"], image_size=FIXED_SIZE)
    images = np.random.RandomState(3).standard_normal((16, *FIXED_SIZE, 3)).astype("float32")
    (float_logits,) = export.run_artifact("litert", paths["litert"], images)
    (int8_logits,) = export.run_artifact("litert_int8", paths["litert_int8"], images)
    assert export.size_on_disk(paths["litert_int8"]) < 0.35 * export.size_on_disk(paths["litert"])
    error = np.abs(int8_logits - float_logits).max() / np.abs(float_logits).max()
    assert 1e-4 < error < 0.1, f"int8 max|d| = {error:.2e} x max|float32|"
    assert _top1_agreement(int8_logits, float_logits) >= 0.9
    assert not litert_operators(paths["litert_int8"])["custom"]


# --------------------------------------------------------------------------- OpenVINO's default precision


def test_openvino_export_names_the_float32_option(tmp_path, caplog):
    """OpenVINO infers in bf16 by default on CPUs with bf16 instructions, and nothing in the model file changes
    that (see `export.OPENVINO_FLOAT32`): the export's log names the option that does; compiled with it the
    artifact equals timm. Compiled with OpenVINO's defaults it is measured too: on a bf16 CPU it must be off
    (else OpenVINO now keeps float32 by default, and the log and `OPENVINO_FLOAT32` are to be revisited)."""
    reason = export.support("openvino")
    if reason:
        pytest.skip(f"openvino on {BACKEND}: {reason}")
    import openvino as ov

    reference = random_timm_model("convnextv2_atto", num_classes=NUM_CLASSES, seed=5)
    model = convert(state_dict_numpy(reference))
    caplog.set_level("WARNING", logger="convnext_hub")
    path = export.export(model, tmp_path, ["openvino"], image_size=_fixed_size())["openvino"]
    [record] = [r for r in caplog.records if r.name == "convnext_hub" and str(path) in r.getMessage()]
    assert repr(export.OPENVINO_FLOAT32) in record.getMessage() and "\n" not in record.getMessage()
    images = _inputs()[-1]
    core = ov.Core()
    reports = {}
    for name, config in {"float32 option": export.OPENVINO_FLOAT32, "defaults": None}.items():
        compiled = core.compile_model(str(path), "CPU", *([config] if config else []))  # defaults: no config at all
        outputs = [compiled(images)[output] for output in compiled.outputs]
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        reports[name] = precision, export.compare_outputs(outputs, model, reference, images)
    precision, report = reports["float32 option"]
    assert precision == ov.Type.f32 and report.passed, "\n".join(report.lines())
    precision, report = reports["defaults"]
    if precision == ov.Type.bf16:
        assert report.worst.relative > 1e-3, f"default compile is float32-exact here: {report.lines()}"
    else:
        assert precision == ov.Type.f32 and report.passed, "\n".join(report.lines())
