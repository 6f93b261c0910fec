"""train-teacher --kind gan: a StyleGAN2 (teachers/stylegan.py) on every image of a folder:
the non-saturating logistic loss with R1 on real images (Karras et al. 2020), an EMA
generator, and differentiable augmentation of every image the discriminator sees
(DiffAugment: colour, translation, cutout; Zhao et al. 2020), so that a few hundred images
suffice.

One step updates both networks from one loss: the generator's term reaches the
discriminator only through detached parameters, the discriminator's terms see the fakes
detached, so each network gets the gradient of its own objective (simultaneous updates).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torchvision.utils import make_grid, save_image

from dreamteacher.config import TeacherConfig
from dreamteacher.data import unlabeled_images
from dreamteacher.engine.loop import EMA
from dreamteacher.engine.session import Session
from dreamteacher.errors import UserError
from dreamteacher.randomness import keyed_hflip, keyed_rand, keyed_randn
from dreamteacher.reporting import SAMPLES
from dreamteacher.runfiles import atomic_json, atomic_write
from dreamteacher.runtime import seed_everything
from dreamteacher.teachers.gan import Z_SALT, GANTeacher, save_generator
from dreamteacher.teachers.stylegan import GAN_PRESETS, Discriminator, Generator

AUGMENTS = ("color", "translation", "cutout")


def diff_augment(x: torch.Tensor, keys: list[int], policy: list[str], salt: int) -> torch.Tensor:
    """DiffAugment of x (# B, 3, H, W in [-1, 1]), differentiable in x, each sample's draws
    keyed: brightness +-0.5, saturation x [0, 2], contrast x [0.5, 1.5]; a shift of up to
    1/8 of each side (zero fill); a zeroed rectangle of half each side."""
    b, _, h, w = x.shape
    r = keyed_rand(keys, (7,), x.device, salt).to(x.dtype)  # B, 7
    if "color" in policy:
        x = x + (r[:, 0, None, None, None] - 0.5)
        m = x.mean(1, keepdim=True)
        x = (x - m) * (r[:, 1, None, None, None] * 2) + m
        m = x.mean([1, 2, 3], keepdim=True)
        x = (x - m) * (r[:, 2, None, None, None] + 0.5) + m
    if "translation" in policy:
        my, mx = h // 8, w // 8
        dy = (r[:, 3] * (2 * my + 1)).floor().long() - my  # B in [-my, my]
        dx = (r[:, 4] * (2 * mx + 1)).floor().long() - mx
        gy = (torch.arange(h, device=x.device)[None, :, None] + dy[:, None, None] + 1).clamp(
            0, h + 1
        )
        gx = (torch.arange(w, device=x.device)[None, None, :] + dx[:, None, None] + 1).clamp(
            0, w + 1
        )
        padded = F.pad(x, [1, 1, 1, 1])  # the border row/column is the zero fill
        x = padded[torch.arange(b, device=x.device)[:, None, None], :, gy, gx].permute(0, 3, 1, 2)
    if "cutout" in policy:
        cy, cx = r[:, 5] * h, r[:, 6] * w  # B: the rectangle's centre
        ys = torch.arange(h, device=x.device)[None, :, None].to(x.dtype)
        xs = torch.arange(w, device=x.device)[None, None, :].to(x.dtype)
        inside = ((ys - cy[:, None, None]).abs() < h / 4) & ((xs - cx[:, None, None]).abs() < w / 4)
        x = x * (~inside).unsqueeze(1).to(x.dtype)
    return x


class GANPair(nn.Module):
    """Generator and discriminator trained together; forward returns the step's losses."""

    def __init__(
        self, g: Generator, d: Discriminator, r1_gamma: float, policy: list[str], r1_every: int
    ):
        super().__init__()
        self.G, self.D = g, d
        self.r1_gamma, self.policy, self.r1_every = r1_gamma, policy, r1_every

    def forward(self, real: torch.Tensor, keys: list[int], step: int) -> dict[str, torch.Tensor]:
        """real # B, 3, H, W in [-1, 1]; z, noise and augmentations keyed by `keys`. R1 every
        `r1_every` steps, weighted by r1_every (lazy regularisation, Karras et al. 2020)."""
        z = keyed_randn(keys, (self.G.z_dim,), real.device, salt=Z_SALT)
        fake, _ = self.G(z, noise_mode="random", keys=keys)  # B, 3, H, W
        frozen_d = {n: p.detach() for n, p in self.D.named_parameters()}
        # the generator's term: its gradient flows into G only
        g = F.softplus(
            -functional_call(self.D, frozen_d, (diff_augment(fake, keys, self.policy, 21),))
        )
        d_fake = self.D(diff_augment(fake.detach(), keys, self.policy, 21))
        lazy = step % self.r1_every == 0
        real = diff_augment(real, keys, self.policy, 22).detach().requires_grad_(lazy)
        d_real = self.D(real)
        d = F.softplus(d_fake.float()).mean() + F.softplus(-d_real.float()).mean()
        g = g.float().mean()
        out = {"loss": g + d, "g": g, "d": d}
        if lazy:  # R1: the squared gradient norm of D on real images
            (grad,) = torch.autograd.grad(d_real.float().sum(), real, create_graph=True)
            r1 = grad.float().square().sum([1, 2, 3]).mean()
            out["loss"] = out["loss"] + self.r1_gamma / 2 * self.r1_every * r1
            out["r1"] = r1
        return out


def build_gan(cfg: TeacherConfig) -> tuple[Generator, Discriminator]:
    if cfg.preset not in GAN_PRESETS:
        raise UserError(f"unknown --preset '{cfg.preset}' for a GAN; choose one of "
                        f"{', '.join(GAN_PRESETS)}")  # fmt: skip
    p = GAN_PRESETS[cfg.preset]
    g = Generator(cfg.image_size, p["z_dim"], p["z_dim"], p["mapping_layers"], p["channel_base"],
                  p["channel_max"])  # fmt: skip
    return g, Discriminator(cfg.image_size, p["channel_base"], p["channel_max"])


def train_gan(cfg: TeacherConfig) -> Path:
    """Train the GAN; writes RUN/generator.safetensors (EMA), RUN/teacher.json,
    RUN/samples.png (and a grid at every checkpoint). Runs under torchrun too."""
    with Session(cfg) as s:
        data = unlabeled_images(cfg.data, cfg.image_size, cfg.splits, cfg.strict)
        policy = [p for p in cfg.diffaugment.split(",") if p]
        if bad := [p for p in policy if p not in AUGMENTS]:
            raise UserError(f"unknown diffaugment '{bad[0]}'; use a comma-separated subset of "
                            f"{','.join(AUGMENTS)}, or ''")  # fmt: skip
        seed_everything(cfg.seed)  # same init on every rank
        g, d = build_gan(cfg)
        pair = GANPair(g, d, cfg.r1_gamma, policy, cfg.r1_every).to(s.device)
        run = s.open_run()
        ema = EMA(pair, cfg.ema_decay, part="G")
        if s.main:
            print(
                f"train-teacher (gan): {len(data)} images at {cfg.image_size[0]}x"
                f"{cfg.image_size[1]}, StyleGAN2 {cfg.preset}: G "
                f"{sum(p.numel() for p in g.parameters()) / 1e6:.2f}M, D "
                f"{sum(p.numel() for p in d.parameters()) / 1e6:.2f}M params; {cfg.steps} steps "
                f"of global batch {s.global_batch}, DiffAugment {','.join(policy) or 'off'}, "
                f"device {s.device}"
            )

        def micro_step(model, batch, keys, step) -> dict[str, torch.Tensor]:
            (x,) = keyed_hflip(keys, *batch)  # B, 3, H, W in [0, 1]
            return model(x * 2 - 1, keys, step)

        def samples(step: int, path: Path) -> None:
            """The EMA generator's images for keys 0..num_samples-1 (the grids compare)."""
            teacher = GANTeacher(ema.module)
            grid, _ = teacher.sample(list(range(cfg.num_samples)), s.device)
            nrow = int(cfg.num_samples**0.5)
            run.log_image("samples", make_grid(grid.cpu(), nrow=nrow), step)
            atomic_write(path, lambda tmp: save_image(grid.cpu(), tmp, nrow=nrow, format="png"))

        def at_checkpoint(step: int) -> None:  # the last one's grid is samples.png
            if cfg.checkpoint_samples and step < cfg.steps:
                samples(step, run.dir / SAMPLES / f"step_{step:08d}.png")

        seconds = s.fit(
            pair, micro_step, data, run, total=cfg.steps, warmup=cfg.warmup_steps,
            desc="train-teacher", ema=ema, sync_bn=False, on_checkpoint=at_checkpoint,
            lr_final_frac=0.1,
        )  # fmt: skip
        if s.main:
            save_generator(run.dir, ema.module)
            levels = GANTeacher(ema.module)
            atomic_json(
                {
                    "type": "gan",
                    "image_size": list(cfg.image_size),
                    "preset": cfg.preset,
                    "steps": cfg.steps,
                    "data": str(cfg.data),
                    "generator": ema.module.settings(),
                    "parameters": sum(p.numel() for p in ema.module.parameters()),
                    "levels": {"strides": levels.strides, "channels": levels.channels},
                    "train_time_s": round(seconds, 1),
                },
                run.dir / "teacher.json",
            )
            samples(cfg.steps, run.dir / "samples.png")
            print(f"teacher saved to {run.dir}; samples in {run.dir / 'samples.png'}")
        return run.dir
