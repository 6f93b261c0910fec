"""Command line: a thin layer over dreamteacher.api.

dreamteacher train-teacher --data DIR --out RUN [--preset tiny|small|base] [key=value ...]
dreamteacher pretrain --data DIR --teacher RUN --backbone resnet50 --out RUN2
dreamteacher export RUN2 --out BB
dreamteacher finetune --data SEGDIR --backbone resnet50 --weights BB|scratch --out RUN3
dreamteacher train-interpreter --teacher RUN --data SEGDIR --labels N --out RUN4
dreamteacher pretrain --mode mix --interpreter RUN4 --data DIR --teacher RUN --out RUN5
dreamteacher train-ddpm-seg --teacher RUN --data SEGDIR --labels N --out RUN6
dreamteacher pretrain-baseline --method simclr|mocov2|byol|densecl --data DIR --out RUN2
dreamteacher benchmark --data SEGDIR --out DIR [--profile smoke|cpu|gpu] [key=value ...]
dreamteacher demo [--out DIR]
"""

from __future__ import annotations

import argparse
import sys

from dreamteacher.errors import UserError


def _common(p: argparse.ArgumentParser, *, data: bool = True) -> None:
    if data:
        p.add_argument("--data", help="input folder")
    p.add_argument("--out", help="run folder to write")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--image-size",
        nargs="+",
        metavar="H W",
        help="input size: one number (square) or H W",
    )
    p.add_argument("--batch-size", type=int)
    p.add_argument(
        "--save-every",
        type=int,
        help="steps between checkpoints (cache-features: batches between progress records)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="continue from the last checkpoint in --out",
    )
    p.add_argument("--device", help="cpu, cuda or auto (default)")
    p.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="fail on an unreadable or unmatched input file instead of skipping it",
    )
    p.add_argument("--config", help="YAML file of config keys")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dreamteacher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-teacher", help="train a diffusion teacher on a folder of images")
    _common(p)
    p.add_argument("--preset", help="UNet size: tiny, small or base")
    p.add_argument("--steps", type=int)

    p = sub.add_parser("pretrain", help="distil a teacher's features into a timm backbone")
    _common(p)
    p.add_argument("--teacher", help="train-teacher run folder or a diffusers UNet folder")
    p.add_argument("--backbone", help="timm model name, e.g. resnet50")
    p.add_argument("--epochs", type=int)
    p.add_argument("--t", nargs="+", help="diffusion step(s) of the encoding")
    p.add_argument("--mode", help="feature (default), label or mix distillation")
    p.add_argument("--interpreter", help="train-interpreter run folder (label and mix modes)")

    p = sub.add_parser("cache-features", help="store teacher features once, for pretrain")
    _common(p)
    p.add_argument("--teacher", help="train-teacher run folder")
    p.add_argument("--t", nargs="+", help="diffusion step(s) of the encoding")

    p = sub.add_parser("export", help="write the pretrained backbone as timm weights")
    p.add_argument("run", help="pretrain run folder")
    p.add_argument("--out", required=True, help="export folder")

    p = sub.add_parser("finetune", help="fine-tune for segmentation and evaluate (mIoU)")
    _common(p)
    p.add_argument("--backbone", help="timm model name")
    p.add_argument("--weights", help="exported backbone folder, or 'scratch'")
    p.add_argument("--labels", type=int, help="number of labelled training images")
    p.add_argument("--steps", type=int)

    p = sub.add_parser(
        "train-interpreter", help="segment with the teacher's features: the feature interpreter"
    )
    _common(p)
    p.add_argument("--teacher", help="train-teacher run folder")
    p.add_argument("--labels", type=int, help="number of labelled training images")
    p.add_argument("--epochs", type=int)
    p.add_argument("--t", nargs="+", help="diffusion step(s) of the encoding")

    p = sub.add_parser("train-ddpm-seg", help="the DDPM-seg baseline: per-pixel MLP ensemble")
    _common(p)
    p.add_argument("--teacher", help="train-teacher run folder")
    p.add_argument("--labels", type=int, help="number of labelled training images")
    p.add_argument("--steps", type=int)
    p.add_argument("--t", nargs="+", help="diffusion steps whose features are concatenated")

    p = sub.add_parser("pretrain-baseline", help="a self-supervised baseline (needs lightly)")
    _common(p)
    p.add_argument("--method", help="simclr, mocov2, byol or densecl")
    p.add_argument("--backbone", help="timm model name, e.g. resnet50")
    p.add_argument("--epochs", type=int)

    p = sub.add_parser("benchmark", help="label-efficient benchmark: DreamTeacher vs baselines")
    p.add_argument("--data", help="mask folder (default ../shared/datasets/camvid)")
    p.add_argument("--out", help="output folder (default runs/benchmark)")
    p.add_argument("--profile", default="cpu", help="smoke, cpu or gpu")
    p.add_argument("--device", help="cpu, cuda or auto (default)")
    p.add_argument("--config", help="YAML file of benchmark keys")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="benchmark settings")

    p = sub.add_parser("demo", help="the whole pipeline on generated scenes (about 10 min)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--device", default=None)
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="demo settings, e.g. teacher_steps=200"
    )
    return ap


_FLAG_KEYS = (
    "data",
    "out",
    "seed",
    "image_size",
    "batch_size",
    "save_every",
    "resume",
    "device",
    "preset",
    "steps",
    "teacher",
    "backbone",
    "epochs",
    "t",
    "weights",
    "labels",
    "strict",
    "method",
    "mode",
    "interpreter",
)


def _split_numbers(args: argparse.Namespace, key: str) -> None:
    """`--image-size 64 80 lr=1e-3`: argparse gives the option every token; the leading
    integers are the option's, the rest are key=value overrides."""
    tokens = getattr(args, key, None)
    if tokens is None:
        return
    k = 0
    while k < len(tokens) and tokens[k].lstrip("-").isdigit():
        k += 1
    if k == 0:
        raise UserError(f"--{key.replace('_', '-')} needs integers, got {tokens[0]!r}")
    setattr(args, key, [int(v) for v in tokens[:k]])
    args.overrides = tokens[k:] + list(args.overrides or [])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may sit anywhere among the options
    args, extra = parser.parse_known_args(argv)
    bad = [x for x in extra if x.startswith("-") or "=" not in x]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = list(getattr(args, "overrides", None) or []) + extra
    from dreamteacher import api  # imported late: `--help` stays fast
    from dreamteacher.config import parse_overrides

    try:
        _split_numbers(args, "image_size")
        _split_numbers(args, "t")
        if args.command == "export":
            api.export(args.run, args.out)
            return 0
        if args.command == "benchmark":
            api.benchmark(
                args.data,
                args.out,
                profile=args.profile,
                config=args.config,
                overrides=args.overrides,
                device=args.device,
            )
            return 0
        if args.command == "demo":
            api.demo(args.out, device=args.device, **parse_overrides(args.overrides))
            return 0
        kw = {k: getattr(args, k) for k in _FLAG_KEYS if getattr(args, k, None) is not None}
        fn = {
            "cache-features": api.cache_features,
            "train-teacher": api.train_teacher,
            "pretrain": api.pretrain,
            "finetune": api.finetune,
            "pretrain-baseline": api.pretrain_baseline,
            "train-interpreter": api.train_interpreter,
            "train-ddpm-seg": api.train_ddpm_seg,
        }[args.command]
        fn(config=args.config, overrides=args.overrides, **kw)
        return 0
    except UserError as e:
        print(f"dreamteacher {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
