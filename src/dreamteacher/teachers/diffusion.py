"""The diffusion teacher: a diffusers UNet2DModel + DDPMScheduler read by stochastic encoding.

Features (docs/method.md, "Teacher"): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with fresh noise,
one UNet pass at t, and the output of the last layer of each decoder resolution BEFORE its
upsampler (`up_blocks[i].attentions[-1]` when the block has attention, else
`up_blocks[i].resnets[-1]`). Up block i of an L-level UNet runs at stride 2^(L-1-i).
A wanted stride coarser than the UNet's coarsest decoder level is derived by average-pooling
the coarsest tapped map (recorded in `derived`) in ceil mode: an H x W image gives
ceil(H/s) x ceil(W/s), the grid of a strided CNN's stage, and every column reaches it.
The pass stops after the finest tap.

For UNets of plain blocks (UpBlock2D / AttnUpBlock2D, what train-teacher builds) the pass is
written out layer by layer, one graph that `compile_features()` hands to torch.compile. Other
UNets (e.g. the Skip blocks of NCSN++) are read through forward hooks, uncompiled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from dreamteacher.config import IMAGE_SIZE, STRIDES, T
from dreamteacher.errors import UserError
from dreamteacher.randomness import keyed_randint, keyed_randn
from dreamteacher.runfiles import track
from dreamteacher.teachers.base import Teacher, check_divisible, register_loader, register_teacher

# UNet sizes. base follows the paper's in-domain ADM (256 ch base, mult 1,1,2,2,4,4, 2 res
# blocks, attention at 32/16/8 px for 256 px input) at half width.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "block_out_channels": [32, 64, 64, 128, 128],
        "layers_per_block": 1,
        "attention_levels": [4],
    },
    "small": {
        "block_out_channels": [64, 128, 128, 256, 256],
        "layers_per_block": 2,
        "attention_levels": [3, 4],
    },
    "base": {
        "block_out_channels": [128, 128, 256, 256, 512, 512],
        "layers_per_block": 2,
        "attention_levels": [3, 4, 5],
    },
}


def unet_kwargs(
    preset: str = "tiny",
    block_out_channels: list[int] | None = None,
    layers_per_block: int | None = None,
    attention_levels: list[int] | None = None,
) -> dict[str, Any]:
    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    p = dict(PRESETS[preset])
    if block_out_channels is not None:
        p["block_out_channels"] = list(block_out_channels)
    if layers_per_block is not None:
        p["layers_per_block"] = layers_per_block
    if attention_levels is not None:
        p["attention_levels"] = list(attention_levels)
    n = len(p["block_out_channels"])
    attn = set(p["attention_levels"])
    if any(a < 0 or a >= n for a in attn):
        raise UserError(f"attention_levels {sorted(attn)} must lie in 0..{n - 1}")
    down = tuple("AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if (n - 1 - i) in attn else "UpBlock2D" for i in range(n))
    groups = 32 if all(c % 32 == 0 for c in p["block_out_channels"]) else 8
    return {
        "block_out_channels": tuple(p["block_out_channels"]),
        "layers_per_block": p["layers_per_block"],
        "down_block_types": down,
        "up_block_types": up,
        "norm_num_groups": groups,
    }


def build_unet(image_size: list[int], preset: str = "tiny", **overrides: Any) -> UNet2DModel:
    """A fresh UNet2DModel for RGB images of `image_size` (H, W)."""
    kw = unet_kwargs(preset, **overrides)
    check_divisible(image_size, 2 ** (len(kw["block_out_channels"]) - 1))
    h, w = image_size
    return UNet2DModel(sample_size=(h, w), in_channels=3, out_channels=3, **kw)


def build_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "linear"):
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type="epsilon",
    )


# up blocks whose layers `_forward_taps` runs one by one
PLAIN_UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")


class _Stop(Exception):
    pass


class DiffusionTeacher(Teacher):
    """Multi-scale features of a denoising UNet at step(s) t."""

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: DDPMScheduler,
        t: list[int] | int = tuple(T),
        strides: list[int] = tuple(STRIDES),
        image_size: list[int] | None = None,
        latent_stride: int = 1,
    ):
        """`latent_stride`: how many image pixels one UNet input pixel spans (1 in pixel
        space, 8 for Stable Diffusion's latents); strides are always relative to the image."""
        super().__init__()
        self._set_schedule(scheduler, t, image_size)
        self.unet = unet.eval().requires_grad_(False)
        boc = list(unet.config.block_out_channels)
        n = len(boc)
        self.latent_stride = latent_stride
        self.block_strides = [latent_stride * 2 ** (n - 1 - i) for i in range(n)]  # up block i
        self.block_channels = list(reversed(boc))
        self._plan_levels(strides)
        self.min_divisor = latent_stride * 2 ** (n - 1)
        self._last = max(self.taps)  # up blocks run coarse -> fine: stop after the finest tap
        self.plain = not any(hasattr(b, "skip_conv") for b in unet.down_blocks) and all(
            type(b).__name__ in PLAIN_UP_BLOCKS for b in unet.up_blocks[: self._last + 1]
        )
        self._encode = self._forward_taps if self.plain else self._forward_hooked
        self._hooks = []
        self._store: dict[int, torch.Tensor] = {}
        self._running = False  # hooks act only during this teacher's own pass
        if not self.plain:
            for i in sorted(set(self.taps)):
                blk = unet.up_blocks[i]
                attns = getattr(blk, "attentions", None)
                layer = attns[-1] if attns is not None and len(attns) else blk.resnets[-1]
                self._hooks.append(layer.register_forward_hook(self._hook(i)))

    def _set_schedule(
        self, scheduler: Any, t: list[int] | int, image_size: list[int] | None
    ) -> None:
        """t, the noise schedule (alphas_cumprod) and the training resolution."""
        self.image_size = None if image_size is None else list(image_size)  # trained at
        self.scheduler = scheduler
        self.t = [int(v) for v in ([t] if isinstance(t, int) else t)]
        steps = scheduler.config.num_train_timesteps
        if any(v < 0 or v >= steps for v in self.t):
            raise UserError(f"t={self.t} must lie in 0..{steps - 1}")
        self.register_buffer(
            "alphas_cumprod", scheduler.alphas_cumprod.clone().float(), persistent=False
        )

    def _plan_levels(self, strides: list[int]) -> None:
        """Which decoder level (`taps`) serves each wanted stride, from `block_strides` and
        `block_channels` (decoder level i, coarse to fine); coarser strides are `derived`."""
        self.strides = [int(s) for s in strides]
        self.channels, self.taps, self.derived = [], [], {}
        coarsest = max(self.block_strides)
        for s in self.strides:
            if s in self.block_strides:
                i = self.block_strides.index(s)
                self.taps.append(i)
                self.channels.append(self.block_channels[i])
            elif s > coarsest:
                self.derived[s] = coarsest  # avg-pool of the coarsest decoder level
                self.taps.append(0)
                self.channels.append(self.block_channels[0])
            else:
                ok = [v for v in self.strides if v >= min(self.block_strides)]
                raise UserError(
                    f"the UNet has decoder strides {self.block_strides}, none is {s}; read "
                    f"strides it has (e.g. strides={ok}) or use a UNet with more levels"
                )

    def _hook(self, i: int):
        def fn(_module, _inp, out):
            if not self._running:  # another teacher on the same UNet is encoding
                return
            self._store[i] = out if torch.is_tensor(out) else out[0]  # (tuple or model output)
            if i == self._last:
                raise _Stop

        return fn

    def _forward_taps(self, xt: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """UNet2DModel.forward written out for plain blocks, up to the finest tap: one map per
        entry of `taps`, each the up block's output before its upsampler."""
        unet = self.unet
        if unet.config.center_input_sample:
            xt = 2 * xt - 1.0
        emb = unet.time_embedding(unet.time_proj(t).to(unet.dtype))  # B, E
        h = unet.conv_in(xt)  # B, C0, H, W
        skips = (h,)
        for blk in unet.down_blocks:
            h, res = blk(hidden_states=h, temb=emb)
            skips += res
        if unet.mid_block is not None:
            h = unet.mid_block(h, emb)
        taps = {}
        for i, blk in enumerate(unet.up_blocks[: self._last + 1]):
            n = len(blk.resnets)
            res, skips = skips[-n:], skips[:-n]
            attns = getattr(blk, "attentions", None) or [None] * n
            for resnet, attn, skip in zip(blk.resnets, attns, reversed(res), strict=True):
                h = resnet(torch.cat([h, skip], dim=1), emb)
                if attn is not None:
                    h = attn(h)
            taps[i] = h  # B, C_i, H / s_i, W / s_i
            if i < self._last and blk.upsamplers is not None:
                by_resnet = getattr(blk, "upsample_type", "conv") == "resnet"
                for up in blk.upsamplers:
                    h = up(h, emb) if by_resnet else up(h)
        return [taps[i] for i in self.taps]

    def _forward_hooked(self, xt: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """Any UNet2DModel: a full forward read by hooks, stopped after the finest tap."""
        self._store, self._running = {}, True
        try:
            self.unet(xt, t, **self.conditioning(len(xt)))
        except _Stop:
            pass
        finally:
            self._running = False
        maps, self._store = [self._store[i] for i in self.taps], {}
        return maps

    def compile_features(self, **kwargs: Any) -> DiffusionTeacher:
        """torch.compile the UNet pass (`kwargs` go to torch.compile). Shapes are static: a
        new batch or image size compiles once more."""
        if not self.plain:
            kinds = sorted({type(b).__name__ for b in self.unet.up_blocks})
            raise UserError(
                f"compile_teacher needs a UNet of {' / '.join(PLAIN_UP_BLOCKS)} up blocks, this "
                f"one has {', '.join(kinds)}; set compile_teacher=false"
            )
        kwargs.setdefault("dynamic", False)
        self._encode = torch.compile(self._forward_taps, **kwargs)
        return self

    def tap_description(self) -> list[str]:
        out = []
        for s, i in zip(self.strides, self.taps, strict=True):
            blk = self.unet.up_blocks[i]
            name = "attentions[-1]" if getattr(blk, "attentions", None) else "resnets[-1]"
            src = f"up_blocks[{i}].{name}"
            out.append(f"stride {s}: " + (f"avg_pool({src})" if s in self.derived else src))
        return out

    def view(self, strides: list[int]) -> DiffusionTeacher:
        """The same teacher (shared modules) read at `strides` only."""
        v = DiffusionTeacher(
            self.unet, self.scheduler, self.t, strides, self.image_size, self.latent_stride
        )
        return v.to(self.alphas_cumprod.device)

    def conditioning(self, batch: int) -> dict[str, Any]:
        """Keyword arguments of the UNet's call besides x_t and t (none: unconditional)."""
        return {}

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        """What the UNet denoises, from images in [0, 1]: the image in [-1, 1]."""
        return x * 2 - 1

    def features(self, x: torch.Tensor, keys: list[int] | None = None) -> list[torch.Tensor]:
        """x # B, 3, H, W in [0, 1] -> list of # B, C_l, H/s_l, W/s_l. With `keys` (one int per
        sample) each sample's t and noise come from its key; else from the global RNG."""
        B, _, H, W = x.shape
        check_divisible([H, W], self.min_divisor)
        x0 = self.clean(x)  # B, C, H / latent_stride, W / latent_stride
        ts = torch.tensor(self.t, device=x.device)
        if keys is None:
            t = ts[torch.randint(len(self.t), (B,), device=x.device)]  # one t per sample
            noise = torch.randn_like(x0)
        else:
            t = ts[keyed_randint(keys, len(self.t)).to(x.device)]
            noise = keyed_randn(keys, tuple(x0.shape[1:]), x.device).to(x0.dtype)
        ab = self.alphas_cumprod.to(x.device)[t].view(B, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise  # stochastic encoding
        feats = []
        for s, f in zip(self.strides, self._encode(xt, t), strict=True):
            if s in self.derived:  # ceil: the last rows/columns get a window of their own
                f = F.avg_pool2d(f, s // self.derived[s], ceil_mode=True)
            feats.append(f.float())
        return feats


@torch.no_grad()
def sample_images(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    n: int,
    image_size: list[int],
    steps: int = 50,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Draw n images with DDIM (eta=0) using the DDPM's betas. Returns # n, 3, H, W in [0, 1]."""
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, 3, *image_size, generator=g).to(device)
    for t in track(ddim.timesteps, "sample"):
        eps = unet(x, t.to(device)).sample[:, :3]  # 6 channels: learned variance after
        x = ddim.step(eps, t, x).prev_sample
    return ((x.clamp(-1, 1) + 1) / 2).cpu()


@register_teacher("diffusion")
def diffusion_teacher(
    image_size: list[int] = tuple(IMAGE_SIZE),
    preset: str = "tiny",
    t: list[int] | int = tuple(T),
    strides: list[int] = tuple(STRIDES),
    **unet_overrides: Any,
) -> DiffusionTeacher:
    """A randomly initialised diffusion teacher (for tests and as the start of train-teacher)."""
    return DiffusionTeacher(
        build_unet(list(image_size), preset, **unet_overrides),
        build_scheduler(),
        t=t,
        strides=strides,
        image_size=list(image_size),
    )


# what a pixel-space model's output may be: the noise, v (Salimans & Ho 2022) or x0. Features do
# not depend on it (x_t is built from the schedule alone); the sampler uses it.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _read_json(file: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def folder_kind(path: Path) -> str | None:
    """What a teacher folder is: 'run' (train-teacher: unet/ + scheduler/ + teacher.json),
    'pipeline' (a diffusers pipeline saved by save_pretrained: model_index.json, unet/,
    scheduler/), 'unet' (a bare UNet folder), or None."""
    if (path / "unet" / "config.json").exists():
        if (path / "model_index.json").exists() and not (path / "teacher.json").exists():
            return "pipeline"
        return "run"
    cfg = _read_json(path / "config.json")
    if cfg is not None and str(cfg.get("_class_name", "")).startswith("UNet2D"):
        return "unet"
    return None


def load_scheduler(folder: Path, required: bool) -> Any:
    """The noise schedule saved in `folder` (scheduler_config.json), as the class it names;
    without one, the standard 1000-step linear DDPM unless `required`. Any diffusers scheduler
    of the variance-preserving family (DDPM, DDIM, PNDM, DPM-Solver, Euler, ...) works: the
    teacher reads its alphas_cumprod."""
    file = folder / "scheduler_config.json"
    if not file.exists():
        if required:
            raise UserError(
                f"{folder.parent} has no scheduler/scheduler_config.json; save the pipeline with "
                "its scheduler (pipeline.save_pretrained) or restore the file"
            )
        return build_scheduler()
    cfg = _read_json(file)
    if cfg is None:
        raise UserError(f"cannot read {file} (not a JSON object); restore it from the checkpoint")
    name = str(cfg.get("_class_name", "DDPMScheduler"))
    cls = getattr(diffusers, name, None)
    if cls is None or not name.endswith("Scheduler"):
        raise UserError(f"{file} names '{name}', which is not a diffusers scheduler; fix the file")
    try:
        scheduler = cls.from_pretrained(folder)
    except (OSError, ValueError, NotImplementedError, ImportError, TypeError) as e:
        raise UserError(f"cannot load the {name} in {folder} ({type(e).__name__}): {e}") from None
    if not hasattr(scheduler, "alphas_cumprod"):
        raise UserError(
            f"{name} in {folder} has no alphas_cumprod (a variance-exploding or continuous-time "
            "schedule); a teacher needs a DDPM-type schedule (DDPM, DDIM, PNDM, Euler, ...)"
        )
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise UserError(
            f"{file} has prediction_type '{kind}'; supported: {', '.join(PREDICTION_TYPES)}"
        )
    return scheduler


def _trained_size(meta: Path) -> list[int] | None:
    """The resolution a train-teacher run records in teacher.json (None without one)."""
    if not meta.exists():
        return None
    try:
        size = json.loads(meta.read_text()).get("image_size")
        return None if size is None else [int(v) for v in size]
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise UserError(
            f"cannot read {meta} ({type(e).__name__}); restore it from the teacher run or "
            "delete it (the resolution then comes from --image-size)"
        ) from None


def _sample_size(unet: UNet2DModel) -> list[int] | None:
    """The resolution a diffusers UNet's config declares (sample_size: one int or H, W)."""
    size = unet.config.get("sample_size")
    if isinstance(size, int):
        return [size, size]
    if isinstance(size, list | tuple) and len(size) == 2:
        return [int(v) for v in size]
    return None


def _load_unet(unet_dir: Path) -> UNet2DModel:
    cfg = _read_json(unet_dir / "config.json") or {}
    name = cfg.get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
        raise UserError(
            f"{unet_dir} holds a {name}; a pixel-space teacher needs a UNet2DModel, and a "
            "Stable Diffusion folder a UNet2DConditionModel with vae/ beside it"
        )
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the UNet in {unet_dir} ({type(e).__name__}): {e}") from None
    if unet.config.in_channels != 3 or unet.config.out_channels not in (3, 6):
        raise UserError(
            f"the UNet in {unet_dir} maps {unet.config.in_channels} to "
            f"{unet.config.out_channels} channels; a pixel-space teacher maps RGB to 3 (or 6, "
            "learned variance)"
        )
    return unet


def diffusion_files(path: Path) -> list[Path]:
    """The files a diffusion teacher folder is loaded from (configs and weights): what a
    cached result computed from it depends on."""
    kind = folder_kind(path)
    if kind is None:
        return []
    unet_dir = path if kind == "unet" else path / "unet"
    files = [f for f in unet_dir.iterdir() if f.is_file() and not f.name.startswith(".")]
    if kind != "unet":
        files += [path / "scheduler" / "scheduler_config.json", path / "teacher.json"]
    return sorted(f for f in files if f.exists())


@register_loader(lambda p: folder_kind(p) is not None, files=diffusion_files)
def load_diffusion_teacher(
    path: Path, t: list[int] | int = tuple(T), strides: list[int] = tuple(STRIDES)
) -> DiffusionTeacher:
    """From a train-teacher run, a diffusers pipeline folder (DDPMPipeline, DDIMPipeline, ...:
    unet/ + scheduler/) or a bare UNet2DModel folder (then the schedule is the standard
    1000-step linear DDPM). The resolution: teacher.json of a run, else the UNet's
    sample_size."""
    kind = folder_kind(path)
    unet = _load_unet(path if kind == "unet" else path / "unet")
    scheduler = load_scheduler(path / "scheduler", required=kind == "pipeline")
    size = _trained_size(path / "teacher.json") or _sample_size(unet)
    teacher = DiffusionTeacher(unet, scheduler, t=t, strides=strides, image_size=size)
    teacher.source = f"{kind} {path}"
    return teacher
