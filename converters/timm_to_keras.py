"""Convert a ConvNeXt checkpoint to Keras weights, optionally proving it against timm.

    python -m converters.timm_to_keras SOURCE --out DIR [--arch ARCH] [--num-classes N]
                                       [--format keras|weights] [--verify]
    python -m converters.timm_to_keras --random-init convnextv2_atto --out DIR --verify

SOURCE is a checkpoint file (safetensors, .pth/.bin, sharded index), a folder
(Hugging Face transformers or timm layout) or a timm Hub name such as
`convnextv2_base.fcmae_ft_in22k_in1k` (downloaded through huggingface_hub).
DIR receives `model.keras` or `model.weights.h5` plus `config.json`, and
nothing at all unless the whole conversion (and verification) succeeded.
"""
import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("converters")


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m converters.timm_to_keras", description=__doc__.split("\n")[0],
    )
    parser.add_argument("source", nargs="?", help="checkpoint file, folder or timm Hub name")
    parser.add_argument("--random-init", metavar="ARCH", help="convert a timm ARCH with random weights (offline demo)")
    parser.add_argument("--arch", help="timm architecture; inferred from the tensors when omitted")
    parser.add_argument("--num-classes", type=int, help="classifier size (default: the checkpoint's)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--format", choices=("keras", "weights"), default="weights")
    parser.add_argument("--verify", action="store_true", help="compare with timm; exit 1 on FAIL")
    parser.add_argument("--revision", help="Hub revision for a timm Hub name")
    args = parser.parse_args(argv)
    if (args.source is None) == (args.random_init is None):
        parser.error("give exactly one of SOURCE or --random-init ARCH")
    return args


def _step(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def read_source(args):
    """`(state_dict, source_label, arch)` for the SOURCE argument or `--random-init`."""
    from converters.readers import load_checkpoint

    if args.random_init:
        import timm

        from converters.randomize import randomize_

        model = randomize_(timm.create_model(args.random_init, num_classes=args.num_classes or 1000))
        sd = {k: v.numpy() for k, v in model.state_dict().items()}
        return sd, f"random {args.random_init}", args.random_init
    path = Path(args.source)
    if path.exists():
        return load_checkpoint(path, lazy=True), str(path), args.arch
    return _download(args.source, args.revision), args.source, args.arch


def _download(name, revision):
    """Weights of a timm Hub checkpoint (a registry name or alias), through huggingface_hub."""
    import checkpoints
    from convnext_hub.hub import fetch
    from converters.readers import load_checkpoint

    entry = checkpoints.resolve(name)
    remote = fetch.locate(entry["hf_hub_id"], fetch.weight_files(entry["name"]), revision or "main")
    _step(f"downloading {remote.repo_id}/{remote.filename} @ {remote.commit[:10]}")
    return load_checkpoint(fetch.download(remote))


def verify(model, state_dict):
    """max|d| / max|timm| of stage maps (and logits, when the classifier was converted); True if all pass."""
    import numpy as np
    import timm
    import torch

    from converters import layouts
    from converters.conversion import checkpoint_num_classes

    timm_sd = layouts.to_timm_keys(state_dict)
    same_head = checkpoint_num_classes(timm_sd) == model.num_classes
    ref = timm.create_model(model.architecture, num_classes=checkpoint_num_classes(timm_sd)).eval()
    missing, _ = ref.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in timm_sd.items()}, strict=False)
    if missing:  # headless checkpoints (fcmae): compare the stages only
        same_head = False
    x = np.random.RandomState(0).standard_normal((2, 3, 96, 73)).astype("float32")
    with torch.no_grad():
        final, stages = ref.forward_intermediates(torch.from_numpy(x))
        expected = [s.permute(0, 2, 3, 1).numpy() for s in stages] + [ref.forward_head(final).numpy()]
    import keras

    ends = [model.get_layer(f"stages_{i}_blocks_{d - 1}_add").output for i, d in enumerate(model.depths)]
    probe = keras.Model(model.input, ends + [model.output])
    actual = [keras.ops.convert_to_numpy(y) for y in probe(x.transpose(0, 2, 3, 1))]
    names = ["stage 0", "stage 1", "stage 2", "stage 3"] + (["logits"] if same_head else [])
    ok = True
    for name, a, e in zip(names, actual, expected):
        relative = float(np.abs(a - e).max() / np.abs(e).max())
        passed = relative <= 1e-5
        ok &= passed
        print(f"  {name:<8} max|d| = {relative:.2e} x max|timm|  {'PASS' if passed else 'FAIL'}")
    return ok


def write_output(out, save, source):
    """Runs `save(folder)` (which returns the model it saved) and writes `config.json`, in a
    temporary sibling of `out`, then renames: `out` appears whole or not at all. Returns `(out, model)`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model = save(staging)
        config = {"architecture": model.architecture, "model_config": model.get_config(), "source": source}
        (staging / "config.json").write_text(json.dumps(config, indent=1, default=str))
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
    return out, model


def _saving(model, fmt):
    """`save(folder)` for `write_output`: the converted model, as a `.keras` archive or weights."""
    def save(folder):
        if fmt == "keras":
            model.save(folder / "model.keras")
        else:
            model.save_weights(folder / "model.weights.h5")
        return model
    return save


def _streaming(state_dict, arch, source, kwargs):
    """`save(folder)` for `write_output`: weights straight from the checkpoint, no model in memory."""
    from converters import convert_to_weights_file

    def save(folder):
        return convert_to_weights_file(
            state_dict, folder / "model.weights.h5", arch=arch, source=source, progress=True, **kwargs
        )
    return save


def main(argv=None):
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.verify or args.random_init:
        import torch  # noqa: F401  torch (and timm's torchvision) must be imported before TensorFlow
        import timm  # noqa: F401
    from converters import ConversionError, convert

    _step("reading source")
    try:
        state_dict, source, arch = read_source(args)
        _step(f"converting {len(state_dict)} tensors")
        kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
        if args.format == "weights" and not args.verify:
            out, model = write_output(args.out, _streaming(state_dict, arch, source, kwargs), source)
            _step(f"wrote {out}: {model.architecture}, {model.count_params():,} parameters, {model.num_classes} classes")
            return 0
        model = convert(state_dict, arch=arch, source=source, progress=True, **kwargs)
    except (ConversionError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _step(f"built {model.architecture}: {model.count_params():,} parameters, {model.num_classes} classes")
    if args.verify:
        _step("verifying against timm")
        if not verify(model, state_dict):
            print("FAIL: outputs differ from timm; nothing written", file=sys.stderr)
            return 1
    out, _ = write_output(args.out, _saving(model, args.format), source)
    _step(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
