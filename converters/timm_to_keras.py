"""Convert a ConvNeXt checkpoint to Keras weights, optionally proving it against timm.

    python -m converters.timm_to_keras SOURCE --out DIR [--arch ARCH] [--num-classes N]
                                       [--format keras|weights] [--export onnx,litert,saved_model,openvino]
                                       [--verify] [--debug]
    python -m converters.timm_to_keras --random-init convnextv2_atto --out DIR --verify

SOURCE is a checkpoint file (safetensors, .pth/.bin, sharded index), a folder
(Hugging Face transformers or timm layout) or a timm Hub name such as
`convnextv2_base.fcmae_ft_in22k_in1k` (fetched as `load_pretrained` fetches it:
same caches, `--revision`, `HF_HUB_OFFLINE`, `HF_TOKEN`). DIR receives
`model.weights.h5` or `model.keras` plus `config.json` (`convnext_hub.saved_folder`),
and with `--export` the deployment artifacts beside them (`convnext_hub.export`), each
checked in its own runtime against timm under `--verify`; nothing at all unless the
whole conversion (and verification) succeeded.
"""

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import cli


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m converters.timm_to_keras",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("source", nargs="?", help="checkpoint file, folder or timm Hub name")
    parser.add_argument("--random-init", metavar="ARCH", help="convert a timm ARCH with random weights (offline demo)")
    parser.add_argument("--arch", help="timm architecture; inferred from the tensors when omitted")
    parser.add_argument("--num-classes", type=int, help="classifier size (default: the checkpoint's)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--format", choices=("keras", "weights"), default="weights")
    parser.add_argument("--verify", action="store_true", help="compare with timm; exit 1 on FAIL")
    parser.add_argument("--revision", help="Hub revision for a timm Hub name")
    parser.add_argument(
        "--export",
        metavar="FORMATS",
        type=_formats,
        default=(),
        help="comma-separated deployment formats written beside the weights: "
        "onnx, litert, saved_model, openvino, litert_int8",
    )
    cli.add_common_arguments(parser)
    args = parser.parse_args(argv)
    if (args.source is None) == (args.random_init is None):
        parser.error("give exactly one of SOURCE or --random-init ARCH")
    return args


EXPORT_FORMATS = ("onnx", "litert", "saved_model", "openvino", "litert_int8")


def _formats(text):
    formats = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {unknown or text!r}; choose from {', '.join(EXPORT_FORMATS)}"
        )
    return formats


def _step(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Source:
    """What was read: a timm-keyed (or any-layout) state dict, or a model already loaded from the Hub."""

    def __init__(self, label, state_dict=None, model=None, pretrained_cfg=None):
        self.label = label
        self.state_dict = state_dict
        self.model = model
        self.pretrained_cfg = pretrained_cfg or {"source": {"path": label}}


def read_source(args):
    """The `Source` for the SOURCE argument or `--random-init`."""
    from convnext_hub.convert.readers import load_checkpoint

    if args.random_init:
        import timm

        from convnext_hub import variants
        from convnext_hub.convert.randomize import randomize_

        variants.architecture(args.random_init)  # an unknown name: ValueError listing the known ones

        model = randomize_(timm.create_model(args.random_init, num_classes=args.num_classes or 1000))
        state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
        return Source(f"random {args.random_init}", state_dict, pretrained_cfg={"source": f"random {args.random_init}"})
    path = Path(args.source)
    if path.exists():
        return Source(str(path), load_checkpoint(path, lazy=True))
    from convnext_hub.hub.loader import looks_like_path

    if looks_like_path(args.source):
        raise FileNotFoundError(f"{args.source}: no such file or folder")
    return _from_hub(args)


def _from_hub(args):
    """A timm Hub name, loaded as `load_pretrained` loads it (its resolution, caches and errors)."""
    from convnext_hub.hub import load_pretrained

    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    _step(f"fetching {args.source}")
    model = load_pretrained(args.source, revision=args.revision, **kwargs)
    return Source(args.source, model=model, pretrained_cfg=model.pretrained_cfg)


def verify(model, source):
    """Runs `convnext_hub.convert.verification` on `model` against timm with the source's weights.

    Returns the report and `(timm reference, whether its head was loaded)` for checking exports.
    """
    from convnext_hub.convert import layouts, verification
    from convnext_hub.convert.conversion import checkpoint_num_classes

    state_dict = source.state_dict
    if state_dict is None:  # loaded from the Hub: compare with the file it was converted from
        from convnext_hub.hub.sources import source_state_dict

        state_dict = source_state_dict(model.pretrained_cfg)
    timm_sd = layouts.to_timm_keys(state_dict, source=source.label)
    reference, head_loaded = verification.timm_reference(model, timm_sd, checkpoint_num_classes(timm_sd))
    report = verification.compare(model, reference, verification.random_images(), head_loaded=head_loaded)
    for line in report.lines():
        print(f"  {line}")
    return report, (reference, head_loaded)


def write_output(out, save):
    """Runs `save(folder)` in a temporary sibling of `out`, then renames: `out` appears whole or not at all."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        result = save(staging)
        old = None
        if out.exists():  # a directory cannot be replaced in one step: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return result


def _metadata(source, report):
    from convnext_hub.convert.version import CONVERTER_VERSION

    metadata = {"source": source.label, "converter_version": CONVERTER_VERSION}
    if report is not None:
        metadata["equivalence"] = report.as_dict()
    return metadata


def _convert(args, source):
    """The converted model, or None when it was streamed straight into DIR (weights, no verification)."""
    from converters import convert, convert_to_weights_file
    from convnext_hub import saved_folder

    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    if args.format == "weights" and not args.verify and not args.export and source.model is None:

        def stream(folder):
            shell = convert_to_weights_file(
                source.state_dict,
                folder / saved_folder.WEIGHTS_FILE,
                arch=args.arch,
                source=source.label,
                progress=True,
                **kwargs,
            )
            shell.pretrained_cfg = source.pretrained_cfg
            saved_folder.write_config(folder, shell, saved_folder.WEIGHTS_FILE, **_metadata(source, None))
            return shell

        shell = write_output(args.out, stream)
        _step(
            f"wrote {args.out}: {shell.architecture or 'custom geometry'}, {shell.count_params():,} parameters, "
            f"{shell.num_classes} classes"
        )
        return None
    if source.model is not None:
        return source.model
    model = convert(source.state_dict, arch=args.arch, source=source.label, progress=True, **kwargs)
    model.pretrained_cfg = source.pretrained_cfg
    return model


def _streams(args):
    """True when the weights go straight from a local file into DIR (no model computes anything)."""
    return (
        args.format == "weights"
        and not args.verify
        and not args.random_init
        and args.source is not None
        and Path(args.source).exists()
    )


def _choose_backend(args):
    """Streaming into a `.weights.h5` needs no backend computation and the file is the same on every
    backend: use the one that imports fastest (JAX, when installed) unless Keras is imported already."""
    if _streams(args) and "keras" not in sys.modules and importlib.util.find_spec("jax") is not None:
        os.environ["KERAS_BACKEND"] = "jax"


def _command(args):
    _choose_backend(args)
    cli.start_frameworks(need_timm=bool(args.verify or args.random_init))
    from convnext_hub import saved_folder

    _step("reading source")
    source = read_source(args)
    if source.state_dict is not None:
        _step(f"converting {len(source.state_dict)} tensors")
    model = _convert(args, source)
    if model is None:
        return 0
    _step(
        f"built {model.architecture or 'a custom geometry'}: {model.count_params():,} parameters, "
        f"{model.num_classes} classes"
    )
    if args.export:
        from convnext_hub import export

        for fmt in args.export:  # a missing tool or an impossible format: say so before any work
            export.require(fmt)
    report = reference = None
    if args.verify:
        _step("verifying against timm")
        report, reference = verify(model, source)
        if not report.passed:
            print("FAIL: outputs differ from timm; nothing written", file=sys.stderr)
            return 1

    def save(folder):
        saved_folder.write(folder, model, keras_archive=args.format == "keras", **_metadata(source, report))
        if not _export(args, model, folder, reference):
            raise ExportCheckFailed(folder)

    try:
        write_output(args.out, save)
    except ExportCheckFailed:
        print("FAIL: an exported artifact differs from timm; nothing written", file=sys.stderr)
        return 1
    _step(f"wrote {args.out}")
    return 0


class ExportCheckFailed(Exception):
    """An exported artifact failed its check against timm (the staged output is discarded)."""


def _export(args, model, folder, reference):
    """Writes the `--export` artifacts into `folder`; under `--verify` checks each in its own runtime.

    Returns False when an artifact fails its check (then nothing is written).
    """
    if not args.export:
        return True
    import keras

    from convnext_hub import export
    from convnext_hub.convert import verification

    size = None
    if keras.backend.backend() == "torch":  # Keras' torch exporters need a fixed size
        size = tuple((model.pretrained_cfg or {}).get("input_size", (3, 224, 224))[1:])
    _step(f"exporting {', '.join(args.export)}")
    paths = export.export(model, folder, args.export, image_size=size)
    if reference is None:
        return True
    checked = {fmt: path for fmt, path in paths.items() if fmt != "litert_int8"}  # int8 is not held to 1e-5
    images = verification.random_images(*(size or (96, 73)))
    passed = True
    for fmt, report in export.check_artifacts(checked, model, reference[0], images, head_loaded=reference[1]).items():
        print(f"  {fmt}:")
        for line in report.lines():
            print(f"    {line}")
        passed &= report.passed
    return passed


def main(argv=None):
    args = _parse(argv)
    cli.setup_logging()
    return cli.run(lambda: _command(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
