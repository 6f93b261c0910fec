"""GAN teachers: a StyleGAN2 generator read as a feature extractor of its own images
(docs/method.md, "Teacher"; the paper's GAN teachers). A GAN has no encoder, so distillation
runs on synthesized pairs: `sample(keys)` draws z from each key, and returns the images
G(z) and the generator's features of them at the wanted strides (relative to the image).

Two folders load as a GAN teacher: a `train-teacher --kind gan` run (`generator.safetensors`
and teacher.json with "type": "gan"), and a folder holding one StyleGAN2-ADA network pickle
(`*.pkl`, read without running its code: teachers/stylegan_pkl.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dreamteacher.config import STRIDES
from dreamteacher.errors import UserError
from dreamteacher.randomness import keyed_randn
from dreamteacher.runfiles import atomic_write
from dreamteacher.teachers.base import Teacher, register_loader, register_teacher
from dreamteacher.teachers.stylegan import Generator

GENERATOR_FILE = "generator.safetensors"  # a gan run's EMA generator
Z_SALT = 11  # the randomness salt of a sample's z (randomness.keyed_randn)


class GANTeacher(Teacher):
    """Features of the images a StyleGAN2 generator synthesizes: after each synthesis block
    (the block whose stride is wanted), coarser strides average-pooled from the coarsest
    block. Noise maps are the generator's stored ones, so a key fixes its image and maps."""

    synthetic = True  # distilled on its own images: `sample`, not an encoder

    def __init__(self, generator: Generator, strides: list[int] = tuple(STRIDES), psi: float = 1.0):
        super().__init__()
        self.G = generator.eval().requires_grad_(False)
        self.psi = float(psi)
        syn = generator.synthesis
        self.image_size = list(syn.resolution)
        h = self.image_size[0]
        block_strides = [h // s[0] for s in syn.sizes]  # coarse -> fine
        self.strides = [int(s) for s in strides]
        self.taps, self.channels = [], []
        for s in self.strides:
            if s in block_strides:
                i = block_strides.index(s)
            elif s > block_strides[0]:
                i = 0  # pooled from the coarsest block
            else:
                ok = [v for v in self.strides if v >= block_strides[-1]]
                raise UserError(
                    f"the generator's blocks have strides {block_strides}, none is {s}; read "
                    f"strides it has (e.g. strides={ok})"
                )
            self.taps.append(i)
            self.channels.append(syn.channels[i])
        self.min_divisor = 1

    def input_size(self, size: list[int] | None = None) -> list[int]:
        """A generator makes images of one size: `size` must be it (or None)."""
        if size is not None and list(size) != self.image_size:
            h, w = self.image_size
            raise UserError(
                f"the GAN teacher synthesizes {h}x{w} images, not {size[0]}x{size[1]}; pass "
                f"--image-size {h} {w}, or leave it out"
            )
        return list(self.image_size)

    @torch.inference_mode()
    def sample(self, keys: list[int], device: torch.device | str | None = None):
        """(images # B, 3, H, W in [0, 1], features: one # B, C_l, ceil(H/s), ceil(W/s) per
        stride) of the samples drawn from `keys` (one z per key)."""
        device = device or self.G.mapping.w_avg.device
        z = keyed_randn(keys, (self.G.z_dim,), device, salt=Z_SALT)
        img, feats = self.G(z, self.psi, noise_mode="const")
        h, w = self.image_size
        out = []
        for s, i in zip(self.strides, self.taps, strict=True):
            f = feats[i]
            size = (-(-h // s), -(-w // s))
            out.append(f if tuple(f.shape[-2:]) == size else F.adaptive_avg_pool2d(f, size))
        return ((img.float().clamp(-1, 1) + 1) / 2), [f.float() for f in out]

    def features(self, x: torch.Tensor, keys: list[int] | None = None) -> list[torch.Tensor]:
        """The features of the images `sample(keys)` synthesizes: a GAN has no encoder, so `x`
        only gives the batch size and device. Without keys, random ones."""
        if keys is None:
            keys = torch.randint(0, 2**62, (x.shape[0],)).tolist()
        return self.sample(keys, x.device)[1]


@register_teacher("gan")
def gan_teacher(
    image_size: list[int] = (32, 32),
    strides: list[int] = tuple(STRIDES),
    psi: float = 1.0,
    **generator: Any,
) -> GANTeacher:
    """A randomly initialised GAN teacher (for tests; train-teacher --kind gan trains one)."""
    return GANTeacher(Generator(list(image_size), **generator), strides, psi)


def _meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / "teacher.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("type") == "gan" else None


def save_generator(out: Path, generator: Generator) -> None:
    """RUN/generator.safetensors (the generator's settings go into teacher.json, written by
    the caller: engine/gan.py)."""
    state = {k: v.contiguous() for k, v in generator.state_dict().items()}
    atomic_write(out / GENERATOR_FILE, lambda tmp: save_file(state, tmp))


@register_loader(
    lambda p: _meta(p) is not None,
    files=lambda p: [p / GENERATOR_FILE, p / "teacher.json"],
    before_others=True,
)
def load_gan_run(path: Path, t: Any = None, strides: list[int] = tuple(STRIDES), psi: float = 1.0):
    """A train-teacher --kind gan run folder (`t` is a diffusion setting: unused)."""
    meta = _meta(path)
    file = path / GENERATOR_FILE
    if not file.exists():
        raise UserError(f"{path} has a GAN teacher.json but no {GENERATOR_FILE}; train it again")
    g = Generator(**meta["generator"])
    try:
        g.load_state_dict(load_file(str(file)), strict=True)
    except (RuntimeError, OSError) as e:
        first = str(e).strip().splitlines()[0][:160]
        raise UserError(f"{file} does not fit teacher.json's generator ({first})") from None
    teacher = GANTeacher(g, strides, psi)
    teacher.source = f"gan run {path}"
    return teacher
