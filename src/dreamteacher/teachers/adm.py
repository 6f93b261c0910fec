"""ADM teachers: the UNet of "Diffusion Models Beat GANs on Image Synthesis" (Dhariwal & Nichol
2021; guided-diffusion) and of improved DDPM (Nichol & Dhariwal 2021; improved-diffusion),
loaded from the `.pt` state dict those code bases save and the flags it was trained with.

A teacher folder holds one `*.pt` file and `flags.txt` with the checkpoint's flags as its
README prints them, e.g.

    --attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000
    --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256
    --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True
    --use_scale_shift_norm True

(`MODEL_FLAGS="..."` lines or a whole sampling command work too: every `--name value` pair is
read, other words are skipped). A flag left out takes guided-diffusion's default. The `.pt` is
read with `torch.load(weights_only=True)`: tensors only, no code from the file runs.

The network below is written from the papers' description. Its parameter names are those of the
checkpoint format, so loading is strict: every key of the file has a parameter of the same
shape and every parameter a key. Attention splits its qkv projection as [q | k | v], each into
heads; checkpoints in the legacy layout ([q k v] per head, the default of both code bases
unless `--use_new_attention_order True`) get their qkv rows reordered on load.

Features are read as for every diffusion teacher (docs/method.md, "Teacher"): x_t at t, one
pass, and at each decoder resolution the output of its last output block before the upsampler.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from dreamteacher.config import STRIDES, T
from dreamteacher.errors import UserError
from dreamteacher.teachers.base import Teacher, register_loader
from dreamteacher.teachers.diffusion import DiffusionTeacher

FLAGS_FILE = "flags.txt"

# flags of the training and sampling scripts that do not change the network or the schedule
IGNORED_FLAGS = {
    "dropout", "use_fp16", "use_checkpoint", "timestep_respacing", "use_kl",
    "rescale_learned_sigmas", "batch_size", "num_samples", "use_ddim",
    "clip_denoised", "model_path", "lr", "weight_decay", "lr_anneal_steps", "microbatch",
    "ema_rate", "log_interval", "save_interval", "resume_checkpoint", "fp16_scale_growth",
    "schedule_sampler", "data_dir", "anneal_lr", "iterations", "base_samples",
    "large_size", "small_size",
}  # fmt: skip


# channel_mult by image_size when the flags leave it out, as the official scripts choose it
DEFAULT_MULTS = {
    512: [0.5, 1, 1, 2, 2, 4, 4],
    256: [1, 1, 2, 2, 4, 4],
    128: [1, 1, 2, 3, 4],
    64: [1, 2, 3, 4],
    32: [1, 2, 2, 2],  # improved-diffusion's choice (CIFAR-10)
}


@dataclass
class ADMFlags:
    """The model and diffusion flags of an ADM checkpoint (guided-diffusion's defaults)."""

    image_size: int = 64
    num_channels: int = 128
    num_res_blocks: int = 2
    channel_mult: str = ""  # "" = by image_size, as the official scripts choose it
    attention_resolutions: str = "16,8"  # in pixels of the image: 32 means the 32 x 32 level
    num_heads: int = 4
    num_head_channels: int = -1  # when set, heads = channels // num_head_channels
    num_heads_upsample: int = -1  # -1 = num_heads
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    learn_sigma: bool = False
    class_cond: bool = False
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    predict_xstart: bool = False
    rescale_timesteps: bool = False  # improved-diffusion's scripts default to True
    sigma_small: bool = False  # the sampler's fixed variance: posterior beta-tilde, else beta_t

    def mults(self) -> list[float]:
        """Width of each level as a multiple of num_channels (level 0 = full resolution)."""
        if self.channel_mult:
            return [float(v) for v in self.channel_mult.split(",")]
        return [float(v) for v in DEFAULT_MULTS[self.image_size]]

    def attention_strides(self) -> set[int]:
        return {self.image_size // int(r) for r in self.attention_resolutions.split(",") if r}


def parse_flags(text: str, file: Path | str = FLAGS_FILE) -> ADMFlags:
    """ADMFlags from `--name value` (or `--name=value`) pairs anywhere in `text`."""
    words = text.replace('"', " ").replace("'", " ").split()
    fields = {f.name: f for f in dataclasses.fields(ADMFlags)}
    values: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("--"):
            continue
        name, _, value = word[2:].partition("=")
        if not value:
            if i >= len(words):
                raise UserError(f"{file}: --{name} has no value; write --{name} VALUE")
            value, i = words[i], i + 1
        if name in IGNORED_FLAGS or name.startswith("classifier_"):
            continue
        if name not in fields:
            raise UserError(
                f"{file}: unknown flag --{name}; an ADM flags file takes "
                f"{', '.join('--' + n for n in fields)}"
            )
        kind = ADMFlags.__annotations__[name]
        try:
            if kind == "bool":
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                values[name] = value.lower() in ("true", "1")
            elif kind == "int":
                values[name] = int(value)
            else:
                values[name] = value
        except ValueError:
            raise UserError(
                f"{file}: --{name} {value} is not a{'n int' if kind == 'int' else ' ' + kind}; "
                "fix the value"
            ) from None
    flags = ADMFlags(**values)
    if flags.class_cond:
        raise UserError(
            f"{file}: --class_cond True; a class-conditional ADM needs a class label at every "
            "pass, which a teacher of unlabelled images does not have: use an unconditional "
            "checkpoint (e.g. 256x256_diffusion_uncond.pt)"
        )
    if flags.noise_schedule not in ("linear", "cosine"):
        raise UserError(
            f"{file}: --noise_schedule {flags.noise_schedule}; supported: linear, cosine"
        )
    if not flags.channel_mult and flags.image_size not in DEFAULT_MULTS:
        raise UserError(
            f"{file}: --image_size {flags.image_size} has no default channel_mult; add "
            "--channel_mult (e.g. 1,2,2,4)"
        )
    try:
        mults = flags.mults()
        flags.attention_strides()
    except ValueError as e:
        raise UserError(
            f"{file}: cannot read channel_mult or attention_resolutions ({e})"
        ) from None
    if flags.image_size % 2 ** (len(mults) - 1):
        raise UserError(
            f"{file}: --image_size {flags.image_size} is not divisible by "
            f"{2 ** (len(mults) - 1)} ({len(mults)} levels); fix --image_size or --channel_mult"
        )
    return flags


def adm_betas(flags: ADMFlags) -> torch.Tensor:
    """The training noise schedule, in float64. linear: Ho et al. 2020's 1e-4..0.02, scaled by
    1000 / steps; cosine: Nichol & Dhariwal 2021, eq. 17, betas clipped at 0.999."""
    n = flags.diffusion_steps
    if flags.noise_schedule == "linear":
        scale = 1000 / n
        return torch.linspace(scale * 1e-4, scale * 0.02, n, dtype=torch.float64)

    def abar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor(
        [min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=torch.float64
    )


def adm_scheduler(flags: ADMFlags) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=flags.diffusion_steps,
        trained_betas=adm_betas(flags).tolist(),
        beta_schedule="linear" if flags.noise_schedule == "linear" else "squaredcos_cap_v2",
        prediction_type="sample" if flags.predict_xstart else "epsilon",
        variance_type="learned_range"
        if flags.learn_sigma
        else ("fixed_small" if flags.sigma_small else "fixed_large"),
    )


# --- the network --------------------------------------------------------------------------


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) t: [cos | sin] of t * 10000^(-i / half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # B, half
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))  # B, dim


class ResBlock(nn.Module):
    """GN-SiLU-conv, the time embedding (added, or as a scale and shift of the second GN),
    GN-SiLU-dropout-conv, plus a skip (1x1 conv when the width changes). With `up` / `down`
    it also resamples both paths (nearest 2x / 2x2 average) after its first GN-SiLU."""

    def __init__(self, cin: int, cout: int, emb: int, scale_shift: bool, resample: str = ""):
        super().__init__()
        self.scale_shift, self.resample = scale_shift, resample
        self.in_layers = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, cout * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(
            _norm(cout), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers[:-1](x)
        if self.resample == "up":
            h, x = (
                F.interpolate(h, scale_factor=2, mode="nearest"),
                F.interpolate(x, scale_factor=2),
            )
        elif self.resample == "down":
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        h = self.in_layers[-1](h)  # B, Cout, H, W
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]  # B, Cout (x2), 1, 1
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class Attention(nn.Module):
    """Self-attention over all positions with a residual: qkv rows as [q | k | v], each split
    into `heads` contiguous heads; softmax(q k^T / sqrt(d)) v."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        flat = x.reshape(B, C, H * W)
        qkv = self.qkv(self.norm(flat)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = (a.transpose(-1, -2) for a in qkv.unbind(1))  # each B, heads, HW, d
        h = F.scaled_dot_product_attention(q, k, v)  # B, heads, HW, d
        h = h.transpose(-1, -2).reshape(B, C, H * W)
        return x + self.proj_out(h).reshape(B, C, H, W)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _is_resampler(layer: nn.Module) -> bool:
    return isinstance(layer, Downsample | Upsample) or getattr(layer, "resample", "") != ""


class Step(nn.ModuleList):
    """One entry of input_blocks / output_blocks: layers applied in order, the time embedding
    going to the ResBlocks."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor, upsample: bool = True) -> torch.Tensor:
        for layer in self:
            if not upsample and _is_resampler(layer):
                break
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h


class ADMUNet(nn.Module):
    """The ADM UNet for RGB images, unconditional. Level l (0 = finest) has width
    num_channels * channel_mult[l]; attention at the levels attention_resolutions names."""

    def __init__(self, flags: ADMFlags):
        super().__init__()
        self.flags = flags
        mults, base = flags.mults(), flags.num_channels
        attn = flags.attention_strides()
        up_heads = flags.num_heads if flags.num_heads_upsample == -1 else flags.num_heads_upsample

        def heads(ch: int, n: int) -> int:
            if flags.num_head_channels == -1:
                if ch % n:
                    raise UserError(f"{FLAGS_FILE}: {ch} channels do not split into {n} heads")
                return n
            if ch % flags.num_head_channels:
                raise UserError(
                    f"{FLAGS_FILE}: {ch} channels are not a multiple of --num_head_channels "
                    f"{flags.num_head_channels}"
                )
            return ch // flags.num_head_channels

        def res(cin: int, cout: int, resample: str = "") -> ResBlock:
            return ResBlock(cin, cout, emb, flags.use_scale_shift_norm, resample)

        emb = 4 * base
        self.time_embed = nn.Sequential(nn.Linear(base, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = int(mults[0] * base)
        self.input_blocks = nn.ModuleList([Step([nn.Conv2d(3, ch, 3, padding=1)])])
        skips, stride = [ch], 1
        for level, m in enumerate(mults):
            for _ in range(flags.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(m * base))]
                ch = int(m * base)
                if stride in attn:
                    layers.append(Attention(ch, heads(ch, flags.num_heads)))
                self.input_blocks.append(Step(layers))
                skips.append(ch)
            if level < len(mults) - 1:
                down = res(ch, ch, "down") if flags.resblock_updown else Downsample(ch)
                self.input_blocks.append(Step([down]))
                skips.append(ch)
                stride *= 2
        self.middle_block = Step(
            [res(ch, ch), Attention(ch, heads(ch, flags.num_heads)), res(ch, ch)]
        )
        self.output_blocks = nn.ModuleList()
        self.level_ends: list[int] = []  # decoder level i (0 = coarsest): its last output block
        self.level_channels: list[int] = []
        for level, m in reversed(list(enumerate(mults))):
            for i in range(flags.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), int(m * base))]
                ch = int(m * base)
                if stride in attn:
                    layers.append(Attention(ch, heads(ch, up_heads)))
                if level and i == flags.num_res_blocks:
                    layers.append(res(ch, ch, "up") if flags.resblock_updown else Upsample(ch))
                    stride //= 2
                self.output_blocks.append(Step(layers))
            self.level_ends.append(len(self.output_blocks) - 1)
            self.level_channels.append(ch)
        out_channels = 6 if flags.learn_sigma else 3
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def _encode(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, list, torch.Tensor]:
        emb = self.time_embed(timestep_embedding(t, self.flags.num_channels)).to(x.dtype)  # B, E
        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        return self.middle_block(h, emb), skips, emb

    def decoder_levels(self, x: torch.Tensor, t: torch.Tensor, last: int) -> list[torch.Tensor]:
        """Decoder levels 0..`last` (coarse to fine), each its last output block's output
        before the upsampler; the pass stops there."""
        h, skips, emb = self._encode(x, t)
        levels, ends = [], set(self.level_ends)
        for j, block in enumerate(self.output_blocks):
            h = block(torch.cat([h, skips.pop()], dim=1), emb, upsample=j not in ends)
            if j in ends:
                levels.append(h)  # B, C_i, H / s_i, W / s_i
                if len(levels) > last:
                    break
                if _is_resampler(block[-1]):
                    up = block[-1]
                    h = up(h, emb) if isinstance(up, ResBlock) else up(h)
        return levels

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's output (# B, 3 or 6, H, W: eps or x0, then the variance's weights)."""
        h, skips, emb = self._encode(x, t)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


# --- loading ------------------------------------------------------------------------------


def legacy_to_split(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder qkv rows from the legacy layout [q_1 k_1 v_1 | q_2 k_2 v_2 | ...] (per head) to
    [q_1 q_2 ... | k_1 k_2 ... | v_1 v_2 ...]. Works on the weight (3C, C, 1) and bias (3C)."""
    rows, rest = qkv.shape[0], qkv.shape[1:]
    return qkv.reshape(heads, 3, rows // (3 * heads), *rest).transpose(0, 1).reshape(rows, *rest)


def adm_state_dict(unet: ADMUNet, state: dict[str, Any], file: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors as `unet`'s state dict: the strict key and shape check, and
    the qkv reorder of legacy-layout checkpoints. One-line errors name what does not fit."""
    if any(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    own = unet.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = [f"{len(missing)} missing keys" + (f" (first {missing[0]})" if missing else "")]
        parts.append(
            f"{len(unexpected)} unexpected" + (f" (first {unexpected[0]})" if unexpected else "")
        )
        raise UserError(
            f"{file} does not fit its {FLAGS_FILE}: {' and '.join(parts)}; check "
            "--num_res_blocks, --channel_mult, --attention_resolutions, --resblock_updown and "
            "--learn_sigma"
        )
    out = {}
    for k, v in own.items():
        got = state[k]
        if not torch.is_tensor(got) or got.shape != v.shape:
            shape = tuple(got.shape) if torch.is_tensor(got) else type(got).__name__
            raise UserError(
                f"{file}: {k} is {shape} but {FLAGS_FILE} gives {tuple(v.shape)}; check "
                "--num_channels, --channel_mult, --image_size and --learn_sigma"
            )
        out[k] = got.to(v.dtype)
    if not unet.flags.use_new_attention_order:
        for name, mod in unet.named_modules():
            if isinstance(mod, Attention):
                for p in ("weight", "bias"):
                    key = f"{name}.qkv.{p}"
                    out[key] = legacy_to_split(out[key], mod.heads)
    return out


def read_checkpoint(file: Path) -> dict[str, Any]:
    """A state dict from a `.pt` file, read without running any code it may hold."""
    damaged = UserError(
        f"cannot read {file}; the file is damaged or not a PyTorch checkpoint: copy it again"
    )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(e))
        if found is None:
            raise damaged from None
        raise UserError(
            f"{file} holds Python objects besides tensors ({found.group(1)}), and checkpoints "
            "are read without running code; save the model's state_dict() alone"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError):
        raise damaged from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise UserError(f"{file} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def adm_files(path: Path) -> list[Path]:
    return sorted([*path.glob("*.pt"), path / FLAGS_FILE])


class ADMTeacher(DiffusionTeacher):
    """Multi-scale features of an ADM UNet at step(s) t."""

    def __init__(
        self,
        unet: ADMUNet,
        t: list[int] | int = tuple(T),
        strides: list[int] = tuple(STRIDES),
    ):
        Teacher.__init__(self)
        flags = unet.flags
        self._set_schedule(adm_scheduler(flags), t, [flags.image_size] * 2)
        self.unet = unet.eval().requires_grad_(False)
        n = len(unet.level_channels)
        self.latent_stride = 1
        self.block_strides = [2 ** (n - 1 - i) for i in range(n)]  # decoder level i
        self.block_channels = list(unet.level_channels)
        self._plan_levels(strides)
        self.min_divisor = 2 ** (n - 1)
        self._last = max(self.taps)
        self.plain, self._encode = True, self._forward_taps
        self._hooks, self._store, self._running = [], {}, False

    def _forward_taps(self, xt: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        if self.unet.flags.rescale_timesteps:  # the model saw t on a 0..1000 scale
            t = t.float() * (1000.0 / self.unet.flags.diffusion_steps)
        levels = self.unet.decoder_levels(xt, t, self._last)
        return [levels[i] for i in self.taps]

    def tap_description(self) -> list[str]:
        out = []
        for s, i in zip(self.strides, self.taps, strict=True):
            src = f"output_blocks[{self.unet.level_ends[i]}] before its upsampler"
            out.append(f"stride {s}: " + (f"avg_pool({src})" if s in self.derived else src))
        return out

    def view(self, strides: list[int]) -> ADMTeacher:
        v = ADMTeacher(self.unet, self.t, strides)
        v.source = self.source
        return v.to(self.alphas_cumprod.device)


@register_loader(lambda p: (p / FLAGS_FILE).is_file(), files=adm_files)
def load_adm_teacher(
    path: Path, t: list[int] | int = tuple(T), strides: list[int] = tuple(STRIDES)
) -> ADMTeacher:
    """From a folder holding one ADM `.pt` state dict and its `flags.txt`."""
    flags_file = path / FLAGS_FILE
    pts = sorted(path.glob("*.pt"))
    if not pts:
        raise UserError(f"{path} has {FLAGS_FILE} but no .pt checkpoint; put the ADM .pt beside it")
    if len(pts) > 1:
        names = ", ".join(p.name for p in pts)
        raise UserError(f"{path} holds {len(pts)} .pt files ({names}); keep one per folder")
    flags = parse_flags(flags_file.read_text(errors="replace"), flags_file)
    unet = ADMUNet(flags)
    unet.load_state_dict(adm_state_dict(unet, read_checkpoint(pts[0]), pts[0]), strict=True)
    teacher = ADMTeacher(unet, t=t, strides=strides)
    teacher.source = f"adm {path}"
    return teacher
