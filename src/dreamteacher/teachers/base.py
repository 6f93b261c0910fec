"""The teacher protocol and registry.

A teacher maps a batch of images in [0, 1] (# B, 3, H, W) to a list of NCHW feature maps, one
per level, and exposes `channels` and `strides` (the i-th map is
# B, channels[i], H / strides[i], W / strides[i]). It is frozen: no gradients, eval mode.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dreamteacher.errors import UserError


def check_divisible(size: list[int], div: int) -> None:
    """A one-line error unless H and W are multiples of `div`, a UNet's total stride."""
    h, w = size
    if h % div or w % div:
        raise UserError(
            f"image size {h}x{w} is not divisible by {div}, the teacher UNet's total stride; "
            f"pick a multiple of {div} (--image-size)"
        )


class Teacher(nn.Module):
    """Base class: subclasses set `channels`, `strides` and implement `features`.
    `min_divisor`: what H and W must be multiples of; `image_size`: the (H, W) the teacher was
    trained at, when known."""

    channels: list[int]
    strides: list[int]
    min_divisor: int = 1
    image_size: list[int] | None = None
    source: str = ""  # where it was loaded from (kind and folder), when loaded

    def input_size(self, size: list[int] | None = None) -> list[int]:
        """`size` (H, W), or by default the resolution the teacher was trained at; checked
        against `min_divisor`."""
        if size is None:
            if self.image_size is None:
                raise UserError("the teacher folder does not say its resolution; pass --image-size")
            size = self.image_size
        check_divisible(size, self.min_divisor)
        return [int(size[0]), int(size[1])]

    def features(self, x: torch.Tensor, keys: list[int] | None = None) -> list[torch.Tensor]:
        """`keys`: optional per-sample ints that fix each sample's randomness."""
        raise NotImplementedError

    def compile_features(self, **kwargs: Any) -> Teacher:
        """torch.compile the feature pass in place (`compile_teacher=true`)."""
        raise UserError(f"{type(self).__name__} cannot be compiled; set compile_teacher=false")

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, keys: list[int] | None = None) -> list[torch.Tensor]:
        return self.features(x, keys)

    def train(self, mode: bool = True) -> Teacher:  # a teacher always stays in eval mode
        return super().train(False)


class OnTeacher(nn.Module):
    """A trainable model on top of a frozen teacher (interpreter, DDPM-seg): the teacher is
    held but is not a submodule, so it is neither trained nor saved in `state_dict()` (it stays
    in its own folder); `.to()` / `.cuda()` still move it."""

    def __init__(self, teacher: Teacher):
        super().__init__()
        object.__setattr__(self, "teacher", teacher)

    def _apply(self, fn, recurse=True):
        self.teacher._apply(fn, recurse)
        return super()._apply(fn, recurse)


_REGISTRY: dict[str, Callable[..., Teacher]] = {}
# loaders: (predicate on a folder, loader(folder, **kw)), tried in order by `load_teacher`
_LOADERS: list[tuple[Callable[[Path], bool], Callable[..., Teacher]]] = []


def register_teacher(name: str):
    """Decorator: register a builder `fn(**kwargs) -> Teacher` under `name`."""

    def deco(fn: Callable[..., Teacher]) -> Callable[..., Teacher]:
        _REGISTRY[name] = fn
        return fn

    return deco


def register_loader(
    predicate: Callable[[Path], bool],
    files: Callable[[Path], list[Path]],
    before_others: bool = False,
):
    """Decorator: `fn(folder, **kw) -> Teacher` loads the folders `predicate` accepts;
    `files(folder)` lists the files it reads (what a cached result depends on). Loaders are
    tried in order; `before_others` puts this one first (a narrower kind of folder)."""

    def deco(fn: Callable[..., Teacher]) -> Callable[..., Teacher]:
        fn.files = files
        _LOADERS.insert(0 if before_others else len(_LOADERS), (predicate, fn))
        return fn

    return deco


def list_teachers() -> list[str]:
    return sorted(_REGISTRY)


def create_teacher(name: str, **kwargs: Any) -> Teacher:
    if name not in _REGISTRY:
        raise UserError(f"unknown teacher '{name}'; registered: {', '.join(list_teachers())}")
    return _REGISTRY[name](**kwargs)


def load_teacher(path: str | Path, **kwargs: Any) -> Teacher:
    """Load a teacher from a run folder of `train-teacher` or a local diffusers checkpoint."""
    if not path:
        raise UserError(
            "no teacher given; pass --teacher RUN (a train-teacher output folder, or a diffusers "
            "pipeline or UNet folder)"
        )
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"teacher {path} is not a folder; pass the --out folder of train-teacher, a "
            "diffusers pipeline or UNet folder, or a folder of an ADM .pt and its flags.txt"
        )
    for pred, loader in _LOADERS:
        if pred(path):
            return loader(path, **kwargs)
    raise UserError(
        f"{path} holds no teacher (expected unet/config.json of a train-teacher run or a "
        "diffusers pipeline, the config.json of a UNet2DModel folder, or an ADM .pt with its "
        "flags.txt); run train-teacher first"
    )


def teacher_files(path: str | Path) -> list[Path]:
    """The files the teacher in `path` is loaded from (a one-line error if none)."""
    for pred, loader in _LOADERS:
        if pred(Path(path)):
            return loader.files(Path(path))
    load_teacher(path)  # raises the error naming what the folder lacks
    return []


def resolve_teacher(cfg: Any, synthetic_ok: bool = False) -> Teacher:
    """The frozen teacher a command's config names (cfg.teacher read at cfg.t, cfg.strides),
    with cfg.image_size set: by default to the teacher's training resolution, and checked
    against its total stride. A GAN teacher (no encoder) only where `synthetic_ok`."""
    teacher = load_teacher(cfg.teacher, t=cfg.t, strides=cfg.strides)
    if getattr(teacher, "synthetic", False) and not synthetic_ok:
        raise UserError(
            f"{cfg.teacher} is a GAN teacher: it has no encoder to read given images with, so "
            "it only serves `pretrain` (feature distillation on its own images)"
        )
    cfg.image_size = teacher.input_size(cfg.image_size)
    return teacher
