"""Render the benchmark page and the README's headline table from `benchmarks/results/*.json`.

    python benchmarks/render.py          # writes docs/benchmarks.md and README.md's headline table
    python benchmarks/render.py --check  # exit 1 when either differs from what the results give

Each benchmark writes its latest run to `results/<name>.json` (through `report.write_json`: the
machine, the date, and the figures); this script is the only place those figures become prose, so a
re-run updates the page without hand-typing. Figures a JSON does not record (an older run without
versions or command) are shown as "not recorded", never filled in. A JSON this script has no table
for is still listed, with its machine and date and its top-level scalar fields. Charts are the
`results/<name>.png` files the benchmarks draw; the docs site serves them through `docs/hooks.py`.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
HEADLINE_START = "<!-- benchmarks:headline:start -->"
HEADLINE_END = "<!-- benchmarks:headline:end -->"
NOT_RECORDED = "not recorded"
BACKENDS = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "torch"}


def load_results(folder=RESULTS):
    """`{name: parsed JSON}` of every `*.json` in `folder`, by file name."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(Path(folder).glob("*.json"))}


# ----------------------------------------------------------------------------------------------- formatting


def _num(value, digits=2):
    return NOT_RECORDED if value is None else f"{value:,.{digits}f}"


def _ratio(value):
    return NOT_RECORDED if value is None else f"{value:.2f}×"


def _sci(value):
    return NOT_RECORDED if value is None else f"{value:.1e}"


def _table(header, rows, align=None):
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(result, name):
    """Where and when: what the JSON's `machine` (and `environment`) say, "not recorded" for the rest."""
    machine = result.get("machine") or {}
    environment = result.get("environment") or {}
    date = machine.get("date") or environment.get("date") or NOT_RECORDED
    cpus = machine.get("cpus") or environment.get("cpus")
    parts = [
        f"{cpus} CPUs" if cpus else "CPUs " + NOT_RECORDED,
        machine.get("platform") or "platform " + NOT_RECORDED,
        f"Python {machine.get('python') or environment.get('python') or NOT_RECORDED}",
    ]
    if machine.get("gpu") or environment.get("gpu"):
        parts.append(str(machine.get("gpu") or environment.get("gpu")))
    load = machine.get("load_average")
    if load:
        parts.append("load average " + " / ".join(f"{x:.2f}" for x in load))
    versions = result.get("versions") or {
        k: v for k, v in environment.items() if k in ("keras", "tensorflow", "jax", "torch", "timm", "onnxruntime")
    }
    versions_text = ", ".join(f"{k} {v}" for k, v in versions.items()) if versions else NOT_RECORDED
    command = result.get("command")
    command_text = (
        f"`{command}`"
        if isinstance(command, str)
        else ("`" + " ".join(command) + "`" if isinstance(command, list) else NOT_RECORDED)
    )
    return "\n".join(
        [
            f"- **Measured:** {date}; {', '.join(parts)}.",
            f"- **Versions:** {versions_text}.",
            f"- **Command:** {command_text}.",
            f"- **Results:** `benchmarks/results/{name}.json`.",
        ]
    )


def _chart(name, title):
    return f"\n![{title}](assets/benchmarks/{name}.png)\n" if (RESULTS / f"{name}.png").exists() else ""


# ----------------------------------------------------------------------------------------------- sections


def inference_section(result):
    rows = []
    for r in result.get("results", []):
        rows.append(
            [
                r.get("model"),
                BACKENDS.get(r.get("backend"), r.get("backend")),
                r.get("dtype", NOT_RECORDED),
                r.get("batch", NOT_RECORDED),
                _num(r.get("keras_img_s")),
                f"{_num(r.get('timm_img_s'))} ({r.get('timm_mode', NOT_RECORDED)})",
                _ratio(r.get("ratio")),
                f"{_num(r.get('keras_fraction_of_bound'))} / {_num(r.get('timm_fraction_of_bound'))}",
            ]
        )
    failures = result.get("failures") or {}
    text = [
        "## Inference on CPU",
        "",
        "Method: `benchmarks/inference.py`. For each backend, one process builds the Keras model and the timm",
        "model with the same random weights and times them alternately: Keras `predict_on_batch`, timm eager",
        "under `torch.inference_mode`; the best of 3 rounds of at least 3 s each. The bound is the model's",
        "matrix products (every Dense and Conv2D) at the best fp32 matrix-product rate the benchmark measures",
        "in the same process; the fraction is that least possible time over the measured forward.",
        "",
        machine_line(result, "inference"),
        "",
        _table(
            [
                "model",
                "backend",
                "dtype",
                "batch",
                "Keras img/s",
                "timm img/s (mode)",
                "Keras / timm",
                "fraction of the matmul bound, Keras / timm",
            ],
            rows,
            ["---", "---", "---", "---:", "---:", "---:", "---:", "---:"],
        ),
    ]
    if failures:
        text += ["", "Failures: " + "; ".join(f"{k}: {v}" for k, v in sorted(failures.items()))]
    return "\n".join(text) + "\n" + _chart("inference", "CPU inference against timm")


def convert_section(result):
    file_gb = result.get("checkpoint_bytes", 0) / 1e9 or None
    rows = []
    for side, best in (result.get("best") or {}).items():
        peak = best.get("peak_rss")
        rows.append(
            [
                side,
                best.get("backend") or "—",
                _num(best.get("seconds")),
                _ratio((result.get("ratios") or {}).get(side)),
                _num(peak / 1e9) if peak else NOT_RECORDED,
                _ratio(peak / 1e9 / file_gb) if peak and file_gb else NOT_RECORDED,
            ]
        )
    return "\n".join(
        [
            "## Conversion",
            "",
            f"Method: `benchmarks/convert.py`. A random `{result.get('arch', NOT_RECORDED)}` safetensors file "
            f"({_num(file_gb)} GB); each side in a fresh process,",
            "spawn to exit, imports included: timm's `create_model(pretrained=True)` from the file, and",
            "`python -m converters.timm_to_keras FILE --out DIR` with `KERAS_BACKEND` set as the row says (the",
            "command streams on the backend in the second column). Our sides take turns right after timm's, the",
            f"disk is synced before each process; best of {result.get('repeats', NOT_RECORDED)}. "
            "Peak RSS from `VmHWM`.",
            "",
            machine_line(result, "convert"),
            "",
            _table(
                ["side", "streamed on", "seconds", "÷ timm", "peak RSS (GB)", "peak ÷ file"],
                rows,
                ["---", "---", "---:", "---:", "---:", "---:"],
            ),
            _chart("convert", "conversion against timm"),
        ]
    )


def _load_rows(result):
    rows = []
    for row in result.get("rows", []):
        timm = row.get("timm") or {}
        timm_load_forward = (timm.get("load") or 0) + (timm.get("forward") or 0)
        for backend, figures in (row.get("backends") or {}).items():
            cached, ratios = figures.get("cached", {}), figures.get("ratios", {})
            ours = (cached.get("load") or 0) + (cached.get("forward") or 0)
            rows.append(
                [
                    f"{row.get('name')} ({_num((row.get('checkpoint_mb') or 0) / 1000)} GB)",
                    BACKENDS.get(backend, backend),
                    f"{_num(ours)} / {_num(timm_load_forward)} s = {_ratio(ratios.get('cached_load_forward'))}",
                    f"{_num(cached.get('total'), 1)} / {_num(timm.get('total'), 1)} s = {_ratio(ratios.get('total'))}",
                    _ratio(ratios.get("first_load")),
                    _ratio(ratios.get("first_load_peak_over_checkpoint")),
                ]
            )
    return _table(
        [
            "checkpoint",
            "backend",
            "cached load + first forward, ours / timm",
            "whole process, ours / timm",
            "first load ÷ timm's create",
            "first-load peak ÷ file",
        ],
        rows,
        ["---", "---", "---:", "---:", "---:", "---:"],
    )


def load_section(result, tensorflow_only=None):
    text = [
        "## Loading",
        "",
        "Method: `benchmarks/load.py`. A new process to the first logits of one 224×224 image, side by side",
        "with timm. Ours: `load_pretrained(name)` from the converted-weights cache (cached) or from",
        "huggingface_hub's cache into an emptied converted-weights cache (first load); timm:",
        "`create_model(pretrained=True)` from its warm Hugging Face cache; both served by a local Hub. Each",
        f"figure is the median of {result.get('runs', NOT_RECORDED)} runs, our sides taking turns right after "
        "timm's, the disk synced",
        "before each process. Peaks are read from `VmHWM`.",
        "",
        machine_line(result, "load"),
        "",
        _load_rows(result),
        _chart("load", "loading against timm"),
    ]
    if tensorflow_only:
        text += [
            "### From an install with TensorFlow only",
            "",
            "The same benchmark with our side run by another interpreter (`--ours-python`), whose install has",
            "TensorFlow but neither JAX nor matplotlib (in the main environment TensorFlow imports JAX and Keras",
            "imports matplotlib because both are installed).",
            "",
            machine_line(tensorflow_only, "load_tensorflow_only"),
            "",
            _load_rows(tensorflow_only),
            "",
        ]
    return "\n".join(text)


def deploy_section(result):
    rows = result.get("rows", [])
    columns = list(dict.fromkeys((r.get("model"), r.get("batch")) for r in rows))
    runtimes = list(dict.fromkeys(r.get("runtime") for r in rows))
    cell = {(r.get("runtime"), r.get("model"), r.get("batch")): r for r in rows}
    worst = max((r.get("max_rel_diff_vs_timm") or 0 for r in rows if "int8" not in r.get("runtime", "")), default=None)
    body = []
    for runtime in runtimes:
        line = [runtime]
        for model, batch in columns:
            r = cell.get((runtime, model, batch))
            line.append(f"{_num(r.get('images_per_s'), 1)} ({_ratio(r.get('vs_timm_eager'))})" if r else "—")
        body.append(line)
    onnx = [r for r in rows if r.get("runtime") == "ours onnxruntime"]
    onnx_text = ""
    if onnx:
        ratios = [r.get("vs_timm_onnxruntime") for r in onnx if r.get("vs_timm_onnxruntime") is not None]
        if ratios:
            onnx_text = (
                f"Our ONNX in onnxruntime against timm's own ONNX in the same onnxruntime: "
                f"{min(ratios):.2f}–{max(ratios):.2f}×.\n"
            )
    sizes = sorted({r.get("size") for r in rows if r.get("size")})
    return "\n".join(
        [
            "## Deployed runtimes",
            "",
            f"Method: `benchmarks/deploy.py`. CPU, {', '.join(f'{s}×{s}' for s in sizes) or NOT_RECORDED}, "
            "random weights; every runner is",
            "loaded once and timed in turn each round, median of 20 rounds; images/s and the ratio to timm",
            "eager. Each float32 artifact's logits are checked against timm on the timed batch "
            f"(worst: {_sci(worst)} × max|timm|).",
            "",
            machine_line(result, "deploy"),
            "",
            _table(
                ["runtime"] + [f"{m} b{b}" for m, b in columns],
                body,
                ["---"] + ["---:"] * len(columns),
            ),
            "",
            onnx_text + _chart("deploy", "deployed runtimes against timm"),
        ]
    )


def int8_section(result):
    rows = []
    for r in result.get("rows", []):
        size = r.get("size_mb") or {}

        def pair(key):
            figures = r.get(key) or {}
            return f"{_sci(figures.get('max_rel_diff'))}, {_num(figures.get('top1_agreement'))}"

        rows.append(
            [
                r.get("model"),
                f"{pair('keras_int8 random images')} / {pair('keras_int8 photos')}",
                f"{pair('litert_int8 random images')} / {pair('litert_int8 photos')}",
                f"{_num(size.get('saved_model'), 1)} → {_num(size.get('saved_model_int8'), 1)} MB; "
                f"{_num(size.get('litert'), 1)} → {_num(size.get('litert_int8'), 1)} MB",
            ]
        )
    photos = ", ".join(result.get("photos") or []) or NOT_RECORDED
    return "\n".join(
        [
            "## int8 agreement",
            "",
            "Method: `benchmarks/int8_agreement.py`. Every timm parameter randomized, 224×224; for each int8",
            "route, max|int8 − float32| / max|float32 logits| and the top-1 agreement with the float32 model,",
            f"on 16 random images and on scikit-image's photos ({photos}) through the model's own",
            "preprocessing. With random weights, agreement on photos says little about accuracy on a real label",
            "set; it says int8 keeps the float32 model's decisions on natural images as well as on noise.",
            "",
            machine_line(result, "int8"),
            "",
            _table(
                [
                    "model",
                    'Keras `quantize("int8")`: random / photos',
                    "LiteRT dynamic-range int8: random / photos",
                    "size: SavedModel float32 → int8; LiteRT float32 → int8",
                ],
                rows,
            ),
            "",
        ]
    )


def _private_rows(use_name, label, figures, use, fallback, keys):
    """Rows `[use, figure, with, without, without ÷ with]` of one `compared` block of `private_keras.json`."""
    medians = (figures or {}).get("medians") or {}
    rows = []
    for key, what, digits in keys:
        with_use, without = (medians.get(use) or {}).get(key), (medians.get(fallback) or {}).get(key)
        ratio = without / with_use if with_use and without is not None else None
        rows.append(
            [
                use_name,
                f"{label}, {what}",
                _num(with_use, digits),
                _num(without, digits),
                _ratio(ratio) if ratio else "—",
            ]
        )
    return rows


def private_keras_section(result):
    uses = result.get("uses") or {}
    rows = []
    fast = uses.get("fast_path") or {}
    for call in ("call", "predict_on_batch"):
        rows += _private_rows(
            "`run_layers_in_order`",
            f"torch `{'model(x)' if call == 'call' else 'predict_on_batch'}`, {fast.get('model')} b{fast.get('batch')}",
            fast.get(call),
            "fast_path_on",
            "fast_path_off",
            (("seconds", "s", 2), ("peak_above_mb", "peak MB above", 0)),
        )
    shells = uses.get("shells") or {}
    for backend, figures in (shells.get("backends") or {}).items():
        rows += _private_rows(
            "deferred variables",
            f"{BACKENDS.get(backend, backend)} cached load, {shells.get('model')}",
            figures,
            "shell",
            "fallback",
            (("seconds", "s", 2), ("peak_above_mb", "peak MB above", 0)),
        )
    unimported = uses.get("tensorflow_unimported") or {}
    for backend, figures in (unimported.get("backends") or {}).items():
        rows += _private_rows(
            "`tensorflow_left_unimported`",
            f"{BACKENDS.get(backend, backend)} {unimported.get('model')}",
            figures,
            "use",
            "fallback",
            (
                ("get_config_seconds", "`get_config` s", 3),
                ("build_and_get_config_seconds", "build + `get_config` s", 2),
            ),
        )
    for backend, sides in (uses.get("tf_data") or {}).items():
        if not isinstance(sides, dict) or "use" not in sides:
            continue

        def outcome(side):
            return "works" if side.get("works") else f"fails ({(side.get('error') or '').split(':')[0]})"

        rows.append(
            [
                "`accept_any_input`",
                f"crop layer in `tf.data` on {BACKENDS.get(backend, backend)}",
                outcome(sides["use"]),
                outcome(sides["fallback"]),
                "capability",
            ]
        )
    saving = uses.get("saving_through") or {}
    if saving:
        label = f"{saving.get('model')} ({_num((saving.get('checkpoint_mb') or 0) / 1000)} GB) to `.weights.h5`"
        keys = (("seconds", "s", 2), ("peak_above_mb", "peak MB above", 0))
        rows += _private_rows(
            "`saving_through`",
            label + ", vs `convert` + `save_weights`",
            saving,
            "streamed_h5",
            "build_then_save_weights",
            keys,
        )
        rows += _private_rows(
            "`saving_through`",
            label + ", vs streamed `.safetensors`",
            saving,
            "streamed_h5",
            "streamed_safetensors",
            keys,
        )
    other = result.get("other_load")
    return "\n".join(
        [
            "## Private Keras: what each use buys",
            "",
            "Method: `benchmarks/private_keras.py`. Each use of private Keras in `convnext_hub.keras_compat` against",
            "its public-API fallback, taking turns in one run (the order flips each round), medians of "
            f"{result.get('rounds', NOT_RECORDED)} rounds",
            f"({result.get('fast_path_rounds', NOT_RECORDED)} for the in-process forwards); loads, `get_config` "
            "and conversions in a fresh process each.",
            "Peaks are RSS above the RSS before the measured step (`VmHWM`). The last column is the fallback's",
            "figure over the use's: what the use buys."
            + (f" Measured with other work beside it: {other}." if other else ""),
            "",
            machine_line(result, "private_keras"),
            "",
            _table(
                ["use", "figure", "with the use", "with the fallback", "fallback ÷ use"],
                rows,
                ["---", "---", "---:", "---:", "---:"],
            ),
            "",
        ]
    )


def _gpu_environment(result):
    """The first environment a step recorded (the steps of one run share the machine)."""
    for step in (result.get("steps") or {}).values():
        if isinstance(step, dict) and step.get("environment"):
            return step["environment"]
    return {}


def gpu_section(result):
    environment = _gpu_environment(result)
    described = {
        "machine": {
            "date": environment.get("date"),
            "cpus": environment.get("cpus"),
            "python": environment.get("python"),
            "gpu": result.get("gpu"),
        },
        "environment": environment,
        "command": ["python", "benchmarks/gpu_run.py", *result.get("argv", [])] if result.get("argv") else None,
    }
    inference, training, missing = [], [], []
    for name, step in (result.get("steps") or {}).items():
        if not isinstance(step, dict):
            continue
        if step.get("skipped"):
            missing.append(f"`{name}`: skipped ({step['skipped']})")
            continue
        for r in step.get("results") or []:
            if r.get("error"):
                missing.append(f"`{name}`: {r.get('label', name)}: {r['error']}")
            elif step.get("benchmark") == "inference":
                check = r.get("check") or {}
                low = (check.get("keras_low_vs_timm_fp32") or {}).get(r.get("depthwise"))
                verdict = "passed" if check.get("passed") else ("failed" if check else NOT_RECORDED)
                inference.append(
                    [
                        r.get("model"),
                        f"{r.get('dtype')}, batch {r.get('batch')}",
                        r.get("depthwise", NOT_RECORDED),
                        _num(r.get("keras_img_s"), 0),
                        f"{_num(r.get('timm_img_s'), 0)} ({r.get('timm_mode', NOT_RECORDED)})",
                        _ratio(r.get("ratio")),
                        f"{_sci(low)} (bar {check.get('bar', NOT_RECORDED)}, {verdict})",
                    ]
                )
            elif step.get("benchmark") == "train":
                timm = r.get("timm") or {}
                for formulation, keras_side in (r.get("keras") or {}).items():
                    training.append(
                        [
                            f"{r.get('model')} ({formulation})",
                            f"batch {r.get('batch')}, {r.get('precision', NOT_RECORDED)}",
                            _num(keras_side.get("fit_img_s"), 0),
                            _num(keras_side.get("device_step_img_s"), 0),
                            f"{_num(timm.get('img_s'), 0)} ({timm.get('mode', NOT_RECORDED)})",
                            _ratio(keras_side.get("fit_vs_timm"))
                            + " / "
                            + _ratio(keras_side.get("device_step_vs_timm")),
                            f"{_num(keras_side.get('peak_mib'), 0)} / {_num(timm.get('peak_mib'), 0)}",
                        ]
                    )
    text = [
        "## GPU",
        "",
        "Method: `benchmarks/gpu_run.py`, one budgeted run of several steps on one GPU. Inference: Keras on JAX",
        "as one jitted `stateless_call` against timm under `torch.compile` in channels_last, inputs already on",
        "the device, timed alternately in one process; every low-precision output is checked against the other",
        "side's float32 output with the same random weights (max|Δ| / max|fp32| under the bar). Training: the",
        "fine-tuning recipe's step (forward, backward, AdamW, mixed precision) through `model.fit` and through",
        "fit's compiled step on a batch already on the device, against timm compiled with fused AdamW under",
        "`torch.autocast`, with each side's peak device memory.",
        "",
        machine_line(described, "gpu"),
        "",
    ]
    if inference:
        text += [
            _table(
                [
                    "model",
                    "precision",
                    "JAX depthwise",
                    "Keras img/s",
                    "timm img/s (mode)",
                    "Keras / timm",
                    "low-precision check",
                ],
                inference,
                ["---", "---", "---", "---:", "---:", "---:", "---"],
            ),
            "",
        ]
    if training:
        text += [
            _table(
                [
                    "training step",
                    "set-up",
                    "Keras `fit` img/s",
                    "Keras device step img/s",
                    "timm img/s (mode)",
                    "÷ timm (fit / device step)",
                    "peak MiB, Keras / timm",
                ],
                training,
                ["---", "---", "---:", "---:", "---:", "---:", "---:"],
            ),
            "",
        ]
    if missing:
        text += ["Steps without figures in this run: " + "; ".join(missing) + ".", ""]
    return "\n".join(text)


def half_precision_section(result):
    rows = [
        [
            r.get("model"),
            BACKENDS.get(r.get("backend"), r.get("backend")),
            r.get("policy"),
            r.get("steps", NOT_RECORDED),
            _num(r.get("final_loss"), 4),
            _num(r.get("ratio_to_float32"), 3),
            "none" if r.get("finite") else "**yes**",
            f"{r.get('skipped_steps', NOT_RECORDED)} (scale {_num(r.get('final_loss_scale'), 0)})"
            if r.get("loss_scale_optimizer")
            else "—",
            "pass" if r.get("passed") else "**fail**",
        ]
        for r in result.get("rows", [])
    ]
    failures = result.get("failures") or {}
    text = [
        "## Half precision",
        "",
        "Method: `benchmarks/half_precision.py`. convnext_atto (V1) and convnextv2_atto (V2, GRN) converted from",
        "randomized timm weights, fine-tuned on scikit-learn's digits "
        f"({result.get('image_size', NOT_RECORDED)}×{result.get('image_size', NOT_RECORDED)}, batch "
        f"{result.get('batch', NOT_RECORDED)}, {result.get('optimizer', NOT_RECORDED)}) for "
        f"{result.get('steps', NOT_RECORDED)} steps",
        "with the same weights and batch order under each policy; mixed_float16 through the LossScaleOptimizer",
        "`compile` adds. Every loss, and every 25 steps the weights, optimizer variables and a probe batch's",
        f"gradients, are checked for NaN / Inf. Final loss: mean of the last {result.get('final_loss_steps', 'N')} "
        f"steps; a run passes with no non-finite value and |ratio − 1| ≤ {result.get('max_deviation', NOT_RECORDED)}.",
        "",
        machine_line(result, "half_precision"),
        "",
        _table(
            ["model", "backend", "policy", "steps", "final loss", "÷ float32", "NaN / Inf", "skipped steps", "verdict"],
            rows,
            ["---", "---", "---", "---:", "---:", "---:", "---", "---:", "---"],
        ),
        "",
    ]
    if failures:
        text += ["Backends without figures: " + "; ".join(f"{k}: {v}" for k, v in sorted(failures.items())), ""]
    return "\n".join(text)


def random_init_section(result):
    rows = [
        [
            BACKENDS.get(backend, backend),
            model,
            _num(figures.get("keras_truncated_normal_s")),
            _num(figures.get("host_truncated_normal_s")),
            _ratio(figures.get("ratio")),
        ]
        for backend, models in result.get("results", {}).items()
        for model, figures in models.items()
    ]
    return "\n".join(
        [
            "## Random initial weights",
            "",
            "Method: `benchmarks/random_init.py`. `create_model(MODEL)` with random weights in a new process, after",
            "the imports, with Keras' `TruncatedNormal` (one XLA program compiled per variable shape on JAX) and with",
            f"`HostTruncatedNormal` (NumPy), taking turns; medians of {result.get('rounds', NOT_RECORDED)} rounds.",
            "",
            machine_line(result, "random_init"),
            "",
            _table(
                ["backend", "model", "Keras (s)", "NumPy (s)", "Keras ÷ NumPy"],
                rows,
                ["---", "---", "---:", "---:", "---:"],
            ),
            "",
        ]
    )


def _scalars(value, prefix=""):
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in ("machine", "environment"):
                yield from _scalars(item, f"{prefix}{key}.")
    elif isinstance(value, (int, float, str, bool)) or value is None:
        yield prefix[:-1], value


def generic_section(name, result):
    """A results file without a table of its own: its machine and its scalar figures, as recorded."""
    rows = [[f"`{key}`", value if not isinstance(value, float) else f"{value:.4g}"] for key, value in _scalars(result)]
    lists = [key for key, value in result.items() if isinstance(value, list)]
    text = [
        f"## {name}",
        "",
        f"`benchmarks/results/{name}.json`, rendered as recorded (this page has no table of its own for it yet).",
        "",
        machine_line(result, name),
        "",
    ]
    if rows:
        text += [_table(["field", "value"], rows[:60]), ""]
    if lists:
        text += ["Lists in the file, not shown: " + ", ".join(f"`{key}`" for key in lists) + ".", ""]
    return "\n".join(text) + _chart(name, name)


# ----------------------------------------------------------------------------------------------- page


def render_page(results):
    """The benchmark page for `results` (`load_results()`), as Markdown."""
    results = dict(results)
    sections = []
    if "inference" in results:
        sections.append(inference_section(results.pop("inference")))
    if "load" in results:
        sections.append(load_section(results.pop("load"), results.pop("load_tensorflow_only", None)))
    if "convert" in results:
        sections.append(convert_section(results.pop("convert")))
    if "deploy" in results:
        sections.append(deploy_section(results.pop("deploy")))
    if "int8" in results:
        sections.append(int8_section(results.pop("int8")))
    if "gpu" in results:
        sections.append(gpu_section(results.pop("gpu")))
    if "half_precision" in results:
        sections.append(half_precision_section(results.pop("half_precision")))
    if "private_keras" in results:
        sections.append(private_keras_section(results.pop("private_keras")))
    if "random_init" in results:
        sections.append(random_init_section(results.pop("random_init")))
    sections += [generic_section(name, result) for name, result in sorted(results.items())]
    head = [
        "# Benchmarks",
        "",
        "<!-- Rendered by `python benchmarks/render.py` from `benchmarks/results/*.json`: edit those, not this. -->",
        "",
        "Every figure below is the latest run of its benchmark, with the machine and date it was measured",
        "on; earlier figures are in the project's `CHANGELOG.md`. All models have random weights. Each",
        "benchmark runs our side and timm's alternately on the same machine and reports their ratio: the",
        "machines are shared VMs whose speed drifts between minutes, so a ratio measured side by side is",
        "the figure to compare, not an absolute speed. Above 1× favours us for speed (images/s), below 1×",
        "for time and memory.",
        "",
    ]
    return "\n".join(head + [s.rstrip("\n") + "\n" for s in sections]).rstrip("\n") + "\n"


def headline_rows(results):
    """The README's headline table: one row per benchmark, its key ratio and where it was measured."""
    rows = []
    inference = results.get("inference")
    if inference:
        for model in dict.fromkeys(r.get("model") for r in inference.get("results", [])):
            figures = [r for r in inference["results"] if r.get("model") == model]
            ratios = ", ".join(
                f"{BACKENDS.get(r.get('backend'), r.get('backend'))} {_ratio(r.get('ratio'))}" for r in figures
            )
            first = figures[0]
            rows.append(
                [
                    f"CPU inference, {model}, {first.get('dtype')} batch {first.get('batch')}",
                    "Keras img/s ÷ timm eager",
                    ratios,
                    _where(inference),
                ]
            )
    load = results.get("load")
    if load:
        for row in load.get("rows", []):
            backends = row.get("backends") or {}
            ratios = ", ".join(
                f"{BACKENDS.get(b, b)} {_ratio((f.get('ratios') or {}).get('cached_load_forward'))}"
                for b, f in backends.items()
            )
            rows.append([f"cached load + first forward, {row.get('name')}", "seconds ÷ timm", ratios, _where(load)])
    convert = results.get("convert")
    if convert:
        ours = [v for k, v in (convert.get("ratios") or {}).items() if k != "timm"]
        if ours:
            rows.append(
                [
                    f"converting {convert.get('arch')}",
                    "seconds ÷ timm's `create_model`",
                    f"{min(ours):.2f}–{max(ours):.2f}×",
                    _where(convert),
                ]
            )
    deploy = results.get("deploy")
    if deploy:
        ratios = [
            r.get("vs_timm_onnxruntime") for r in deploy.get("rows", []) if r.get("runtime") == "ours onnxruntime"
        ]
        ratios = [r for r in ratios if r is not None]
        if ratios:
            rows.append(
                [
                    "our ONNX in onnxruntime, convnext_tiny / convnextv2_tiny",
                    "img/s ÷ timm's own ONNX",
                    f"{min(ratios):.2f}–{max(ratios):.2f}×",
                    _where(deploy),
                ]
            )
    gpu = results.get("gpu")
    if gpu:
        environment = _gpu_environment(gpu)
        where = f"{(gpu.get('gpu') or 'GPU').split(',')[0]}, {(environment.get('date') or NOT_RECORDED)[:10]}"
        best = {}
        for step in (gpu.get("steps") or {}).values():
            if isinstance(step, dict) and step.get("benchmark") == "inference":
                for r in step.get("results") or []:
                    if r.get("ratio") is not None and r.get("ratio") > best.get(r.get("model"), (0, None))[0]:
                        best[r["model"]] = (r["ratio"], r)
        if best:
            first = next(iter(best.values()))[1]
            rows.append(
                [
                    f"GPU inference, JAX {first.get('dtype')} batch {first.get('batch')}",
                    f"Keras img/s ÷ timm {first.get('timm_mode')}",
                    ", ".join(f"{model} {_ratio(ratio)}" for model, (ratio, _) in best.items()),
                    where,
                ]
            )
    return rows


def _where(result):
    machine = result.get("machine") or {}
    date = (machine.get("date") or (result.get("environment") or {}).get("date") or NOT_RECORDED)[:10]
    cpus = machine.get("cpus")
    return f"{cpus}-core CPU, {date}" if cpus else f"{date}"


def render_headline(results):
    return _table(["benchmark", "figure", "ours ÷ timm", "measured"], headline_rows(results))


def readme_with_headline(readme_text, results):
    """`readme_text` with the table between the headline markers replaced by the rendered one."""
    start, end = readme_text.index(HEADLINE_START), readme_text.index(HEADLINE_END)
    return readme_text[: start + len(HEADLINE_START)] + "\n" + render_headline(results) + "\n" + readme_text[end:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a rendered file is out of date")
    args = parser.parse_args(argv)
    results = load_results()
    wanted = {PAGE: render_page(results), README: readme_with_headline(README.read_text(), results)}
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python benchmarks/render.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
