"""Command line: a thin layer over the Python API (api.py, benchmarking/, demo.py).

dreamteacher train-teacher --data DIR --out RUN [--preset tiny|small|base] [key=value ...]
dreamteacher pretrain --data DIR --teacher RUN --backbone resnet50 --out RUN2
dreamteacher inspect-teacher --teacher RUN|PIPELINE [--image-size H W]
dreamteacher probe --teacher RUN|PIPELINE --data SEGDIR --labels N --out DIR
dreamteacher export RUN2 --out BB [--force]
dreamteacher convert KIND:PATH --out SEGDIR [--size H W]
dreamteacher finetune --data SEGDIR --backbone resnet50 --weights BB|scratch --out RUN3
dreamteacher train-interpreter --teacher RUN --data SEGDIR --labels N --out RUN4
dreamteacher pretrain --mode mix --interpreter RUN4 --data DIR --teacher RUN --out RUN5
dreamteacher train-ddpm-seg --teacher RUN --data SEGDIR --labels N --out RUN6
dreamteacher pretrain-baseline --method simclr|mocov2|byol|densecl --data DIR --out RUN2
dreamteacher benchmark --data SEGDIR|KIND:PATH --out DIR [--profile smoke|cpu|gpu] [key=value ...]
dreamteacher demo [--out DIR]
dreamteacher report RUN|BENCHMARK [--out report.html]

Every command but export, convert and report takes `--config FILE.yaml` and `key=value` overrides of
any key of its config; the flags are the keys named in config.FLAGS. The config is resolved
and checked before the command (and torch) is imported: a bad value is refused at once, in one
line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
import warnings
from typing import Any

from dreamteacher import config as C
from dreamteacher.benchmarking.config import BenchmarkConfig, build_benchmark_config
from dreamteacher.demo import DemoConfig
from dreamteacher.errors import UserError

# command -> (help, its config (None: export), the API function that runs it)
COMMANDS: dict[str, tuple[str, type | None, str]] = {
    "train-teacher": (
        "train a teacher (diffusion model or GAN) on a folder of images",
        C.TeacherConfig,
        "train_teacher",
    ),
    "pretrain": ("distil a teacher's features into a timm backbone", C.PretrainConfig, "pretrain"),
    "cache-features": (
        "store teacher features once, for pretrain",
        C.CacheConfig,
        "cache_features",
    ),
    "probe": (
        "rank a teacher's t and levels by a linear probe's val mIoU",
        C.ProbeConfig,
        "probe",
    ),
    "inspect-teacher": (
        "a teacher's levels, and the time and memory of one encoding per level",
        C.InspectConfig,
        "inspect_teacher",
    ),
    "export": ("write the pretrained backbone as timm weights", None, "export"),
    "convert": ("write a standard dataset (KIND:PATH) as a mask folder", None, "convert"),
    "report": ("write the HTML report of a run or benchmark folder", None, "report"),
    "finetune": ("fine-tune for segmentation and evaluate (mIoU)", C.FinetuneConfig, "finetune"),
    "train-interpreter": (
        "segment with the teacher's features: the feature interpreter",
        C.InterpreterConfig,
        "train_interpreter",
    ),
    "train-ddpm-seg": (
        "the DDPM-seg baseline: per-pixel MLP ensemble",
        C.DDPMSegConfig,
        "train_ddpm_seg",
    ),
    "pretrain-baseline": (
        "a self-supervised baseline (needs lightly)",
        C.BaselineConfig,
        "pretrain_baseline",
    ),
    "benchmark": (
        "label-efficient benchmark: DreamTeacher vs baselines",
        BenchmarkConfig,
        "benchmark",
    ),
    "demo": ("the whole pipeline on generated scenes (about 10 min)", DemoConfig, "demo"),
}


def _add_flags(p: argparse.ArgumentParser, cls: type) -> list[str]:
    """A flag for each field of `cls` named in config.FLAGS, typed from its annotation;
    returns their keys."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    keys = []
    for f in dataclasses.fields(cls):
        if f.name not in C.FLAGS:
            continue
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        base = args[0] if args and typing.get_origin(tp) is not list else tp
        kw: dict = {"help": C.FLAGS[f.name] + _default_text(f.name, getattr(defaults, f.name))}
        kw["dest"] = f.name
        if base is bool:
            kw.update(action="store_true", default=None)
        elif typing.get_origin(base) is list:  # integers; the tokens after them are overrides
            if typing.get_args(base) != (int,):
                raise TypeError(f"--{f.name}: a list flag must be list[int], not {base}")
            kw.update(nargs="+", metavar="N")
        else:
            kw.update(type=base if base in (int, float) else str)
        p.add_argument("--" + f.name.replace("_", "-"), **kw)
        keys.append(f.name)
    return keys


def _default_text(key: str, value: Any) -> str:
    """' (default: ...)' for a flag's help; ' (required)' for a key that has none."""
    if isinstance(value, bool):
        return ""
    if value in ("", None):
        if key == "image_size":
            return " (default: the teacher's resolution)"
        return " (required)" if key in C.REQUIRED and value == "" else ""
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    return f" (default: {value})"


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, list[str]]]:
    """The parser, and each command's flag keys."""
    ap = argparse.ArgumentParser(
        prog="dreamteacher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --epoch is not --epochs
    )
    sub = ap.add_subparsers(dest="command", required=True)
    flags: dict[str, list[str]] = {}
    for name, (text, cls, _) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text, allow_abbrev=False)
        if name == "convert":
            p.add_argument("data", metavar="KIND:PATH", help=C.FLAGS["data"])
            p.add_argument("--out", required=True, help="new or empty folder to write (required)")
            p.add_argument("--size", type=int, nargs="+", metavar="N", help="resize: H W or one N")
            p.add_argument("--strict", action="store_true", help=C.FLAGS["strict"])
            continue
        if name == "report":
            p.add_argument("run", metavar="RUN", help="a run or benchmark folder")
            p.add_argument("--out", help="HTML file to write (default RUN/report.html)")
            continue
        if cls is None:  # export
            p.add_argument("run", help="pretrain or pretrain-baseline run folder")
            p.add_argument("--out", required=True, help="export folder (required)")
            p.add_argument(
                "--force",
                action="store_true",
                help="write into a non-empty folder that is not an export",
            )
            continue
        flags[name] = _add_flags(p, cls)
        p.add_argument("--config", help="YAML file of config keys")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return ap, flags


def _split_numbers(args: argparse.Namespace, key: str) -> None:
    """`--image-size 64 80 lr=1e-3`: argparse gives a list flag every token; the leading
    integers are the flag's, the rest are key=value overrides."""
    tokens = getattr(args, key, None)
    if not isinstance(tokens, list):  # not a list flag, or not given
        return
    k = 0
    while k < len(tokens) and tokens[k].lstrip("-").isdigit():
        k += 1
    if k == 0:
        raise UserError(f"--{key.replace('_', '-')} needs integers, got {tokens[0]!r}")
    setattr(args, key, [int(v) for v in tokens[:k]])
    args.overrides = tokens[k:] + list(args.overrides or [])


def _api(name: str):
    """The function that runs a command, imported only when one runs."""
    if name == "benchmark":
        from dreamteacher.benchmarking import benchmark

        return benchmark
    if name == "demo":
        from dreamteacher.demo import demo

        return demo
    from dreamteacher import api

    return getattr(api, name)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed arguments; `overrides` holds every key=value wherever it stood, `flags`
    the command's flag keys."""
    parser, flags = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [x for x in extra if x.startswith("-") or "=" not in x]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = list(getattr(args, "overrides", None) or []) + extra
    args.flags = flags.get(args.command, [])
    return args


def flag_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments the command's function gets from the flags given."""
    for key in args.flags:
        _split_numbers(args, key)
    return {k: getattr(args, k) for k in args.flags if getattr(args, k) is not None}


def check(command: str, config: str | None, overrides: list[str], kw: dict[str, Any]) -> None:
    """Resolve and check the command's config before the command (and torch) is imported, so
    that a bad value is refused at once; the command resolves it again, identically."""
    if command == "benchmark":
        kw = dict(kw)
        build_benchmark_config(kw.pop("profile", "cpu"), config, overrides, **kw)
    else:
        C.build_config(COMMANDS[command][1], config, overrides, **kw)


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """Warnings as `warning: ...` alone (no source path, no code line)."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    warnings.formatwarning = _warning_line
    try:
        if args.command == "export":
            _api("export")(args.run, args.out, force=args.force)
            return 0
        if args.command == "convert":
            size = C.normalize_size(args.size) if args.size else None
            kw = {"data": args.data, "out": args.out, "size": size, "strict": args.strict}
            C.build_config(C.ConvertConfig, None, None, **kw)  # before torch is imported
            _api("convert")(**kw)
            return 0
        if args.command == "report":
            print(f"report: {_api('report')(args.run, out=args.out)}")
            return 0
        kw = flag_kwargs(args)
        check(args.command, args.config, args.overrides, kw)
        _api(COMMANDS[args.command][2])(config=args.config, overrides=args.overrides, **kw)
        return 0
    except UserError as e:
        print(f"dreamteacher {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the checks could not foresee (permissions, a full disk)
        where = e.filename if e.filename is not None else "a file"
        why = e.strerror or type(e).__name__
        print(
            f"dreamteacher {args.command}: error: cannot use {where} ({why}); fix the path or "
            "its permissions",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
