"""The Stable Diffusion teacher: a latent diffusion model read like the pixel-space one.

Features: the VAE encodes the image (posterior mean, times the folder's scaling factor),
z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps with the folder's schedule, one
UNet2DConditionModel pass at t conditioned on the empty prompt's text embedding, and the
output of the last layer of each up block before its upsampler. Latents are 1/8 of the
image (SD 1.x and 2.x), so SD's four up blocks sit at image strides 64, 32, 16 and 8: a
student reads strides 8, 16 and 32 (`strides=[8,16,32]`). The empty-prompt embedding is
computed once from the folder's text encoder and tokenizer (transformers), or read from
`prompt_embeds.pt` in the folder (a tensor # 1, L, D).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dreamteacher.config import STRIDES, T
from dreamteacher.errors import UserError
from dreamteacher.teachers.base import register_loader
from dreamteacher.teachers.diffusion import DiffusionTeacher, _read_json, load_scheduler

PROMPT_FILE = "prompt_embeds.pt"  # the empty prompt's embedding, when there is no text encoder


class LatentDiffusionTeacher(DiffusionTeacher):
    """Multi-scale features of a latent text-to-image UNet at step(s) t, empty prompt."""

    def __init__(self, vae, unet, scheduler, prompt_embeds: torch.Tensor, **kw: Any):
        latent_stride = 2 ** (len(vae.config.block_out_channels) - 1)
        super().__init__(unet, scheduler, latent_stride=latent_stride, **kw)
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = float(vae.config.get("scaling_factor", 0.18215))
        self.register_buffer("prompt_embeds", prompt_embeds.float(), persistent=False)

    def view(self, strides: list[int]) -> LatentDiffusionTeacher:
        v = LatentDiffusionTeacher(
            self.vae, self.unet, self.scheduler, self.prompt_embeds, t=self.t,
            strides=strides, image_size=self.image_size,
        )  # fmt: skip
        return v.to(self.alphas_cumprod.device)

    def conditioning(self, batch: int) -> dict[str, Any]:
        emb = self.prompt_embeds.to(self.unet.dtype)
        return {"encoder_hidden_states": emb.expand(batch, -1, -1)}  # B, L, D

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> scaled latents # B, 4, H / 8, W / 8."""
        posterior = self.vae.encode(x * 2 - 1).latent_dist
        return posterior.mean * self.scaling_factor


def _is_sd(path: Path) -> bool:
    cfg = _read_json(path / "unet" / "config.json") or {}
    is_sd = cfg.get("_class_name") == "UNet2DConditionModel"
    return is_sd and (path / "vae" / "config.json").exists()


def sd_files(path: Path) -> list[Path]:
    """The files a Stable Diffusion teacher is loaded from."""
    files = [path / "model_index.json", path / PROMPT_FILE]
    for sub in ("unet", "vae", "scheduler", "text_encoder", "tokenizer"):
        if (path / sub).is_dir():
            files += [f for f in (path / sub).iterdir() if f.is_file()]
    return sorted(f for f in files if f.exists() and not f.name.startswith("."))


def empty_prompt_embedding(path: Path) -> torch.Tensor:
    """# 1, L, D: the text encoder's output for the empty prompt (padded to the tokenizer's
    length), or the tensor saved in `prompt_embeds.pt`."""
    file = path / PROMPT_FILE
    if file.exists():
        emb = torch.load(file, map_location="cpu", weights_only=True)
        if not torch.is_tensor(emb) or emb.dim() != 3 or emb.shape[0] != 1:
            raise UserError(f"{file} must hold one tensor of shape 1 x L x D; save it again")
        return emb
    if not (path / "text_encoder").is_dir() or not (path / "tokenizer").is_dir():
        raise UserError(
            f"{path} has no text_encoder/ and tokenizer/ to embed the empty prompt; add them, "
            f"or save the embedding (1 x L x D) as {PROMPT_FILE} in the folder"
        )
    try:
        from transformers import AutoTokenizer, CLIPTextModel
    except ImportError:
        raise UserError(
            "Stable Diffusion folders need the transformers package to embed the empty prompt: "
            f"pip install transformers (or save the embedding as {path / PROMPT_FILE})"
        ) from None
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(path / "text_encoder").eval()
    ids = tokenizer(
        "", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return encoder(ids)[0].float()  # 1, L, D


@register_loader(_is_sd, files=sd_files, before_others=True)
def load_sd_teacher(
    path: Path, t: list[int] | int = tuple(T), strides: list[int] = tuple(STRIDES)
) -> LatentDiffusionTeacher:
    """A Stable Diffusion 1.x / 2.x diffusers folder (vae/, unet/, scheduler/, and
    text_encoder/ + tokenizer/ or prompt_embeds.pt). The resolution: the UNet's sample_size
    times the VAE's downsampling."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    try:
        vae = AutoencoderKL.from_pretrained(path / "vae", low_cpu_mem_usage=False)
        unet = UNet2DConditionModel.from_pretrained(path / "unet", low_cpu_mem_usage=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the model in {path} ({type(e).__name__}): {e}") from None
    scheduler = load_scheduler(path / "scheduler", required=True)
    prompt = empty_prompt_embedding(path)
    if prompt.shape[-1] != unet.config.cross_attention_dim:
        raise UserError(
            f"the empty-prompt embedding has width {prompt.shape[-1]}, the UNet attends to "
            f"{unet.config.cross_attention_dim}; use the folder's own text encoder"
        )
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    size = unet.config.get("sample_size")
    size = [size * factor] * 2 if isinstance(size, int) else None
    teacher = LatentDiffusionTeacher(
        vae, unet, scheduler, prompt, t=t, strides=strides, image_size=size
    )
    teacher.source = f"sd {path}"
    return teacher
