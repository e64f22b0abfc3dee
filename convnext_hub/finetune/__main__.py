"""`python -m convnext_hub.finetune SOURCE --data DIR --out DIR ...`: fine-tune on a folder of images.

A user mistake (a missing or empty folder, one class, an `--out` holding another
run, `--resume` without a checkpoint) ends with one `error: ...` line and exit
code 2, as argparse reports a bad option, before anything is written.
"""

import argparse
import logging
import sys

from ..distribution import use_data_parallel
from . import DataError, RunError, fine_tune_folder


def parser():
    """The command's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m convnext_hub.finetune",
        description="Fine-tune a ConvNeXt on a folder of images (one sub-folder per class) and save it as a folder "
        "that convnext_hub.load_pretrained loads.",
    )
    p.add_argument("source", help="a Hub name, hf://org/repo, or a local checkpoint file / folder")
    p.add_argument("--data", required=True, help="training images, one sub-folder per class")
    p.add_argument("--out", required=True, help="output folder (must be empty unless --resume)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val", help="validation images, with the same class sub-folders as --data")
    val.add_argument(
        "--val-split",
        type=float,
        default=0.1,
        help="fraction of each class of --data held out for validation when --val is not given "
        "(default 0.1; 0 for no validation)",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, help="training image side (default: the checkpoint's)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate (default 0.1)")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--min-scale", type=float, default=0.08, help="smallest area of the random resized crop")
    p.add_argument("--hflip", type=float, default=0.5, help="probability of a horizontal flip")
    p.add_argument(
        "--layer-decay",
        type=float,
        help="layer-wise learning-rate decay as timm's param_groups_layer_decay (e.g. 0.8; default: none)",
    )
    p.add_argument(
        "--ema",
        type=float,
        metavar="MOMENTUM",
        help="keep an EMA of the weights (e.g. 0.999), validate on it and save it (default: none)",
    )
    p.add_argument(
        "--rand-augment",
        type=float,
        default=0.0,
        metavar="FACTOR",
        help="Keras' RandAugment, 2 operations per image, at this strength in [0, 1] (default 0: none)",
    )
    p.add_argument("--reprob", type=float, default=0.0, help="random erasing probability per image (default 0)")
    p.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (default 0: none; timm's recipe: 0.8)")
    p.add_argument("--cutmix", type=float, default=0.0, help="CutMix alpha in [0, 1] (default 0: none; timm's: 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    p.add_argument(
        "--no-pretrained", dest="pretrained", action="store_false", help="start from random weights (no download)"
    )
    p.add_argument(
        "--data-parallel",
        action="store_true",
        help="JAX: split each batch over every local device (keras.distribution.DataParallel); --batch-size is "
        "the whole batch and must divide by the number of devices",
    )
    return p


def main(argv=None):
    """Runs the command; returns the exit code (0, or 2 for a user mistake)."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.data_parallel:
            use_data_parallel(error=RunError)
        fine_tune_folder(
            args.source,
            data=args.data,
            out=args.out,
            val=args.val,
            val_split=args.val_split,
            epochs=args.epochs,
            batch_size=args.batch_size,
            image_size=args.image_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs,
            drop_path=args.drop_path,
            label_smoothing=args.label_smoothing,
            min_scale=args.min_scale,
            hflip=args.hflip,
            seed=args.seed,
            layer_decay=args.layer_decay,
            ema=args.ema,
            rand_augment=args.rand_augment,
            reprob=args.reprob,
            mixup=args.mixup,
            cutmix=args.cutmix,
            resume=args.resume,
            pretrained=args.pretrained,
        )
    except (DataError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
