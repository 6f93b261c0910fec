"""Teachers from local files in other tools' formats: diffusers pipeline folders (DDPM, DDIM)
and bare UNet folders saved with the libraries' own save functions, their schedules read from
the folder, and one-line errors for what is not supported."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    ScoreSdeVeScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)

from dreamteacher.errors import UserError
from dreamteacher.teachers import DiffusionTeacher, load_teacher
from dreamteacher.teachers.diffusion import sample_images, unet_kwargs

from .test_contract import assert_teacher_contract


def tiny_unet(size=32, out_channels=3, in_channels=3) -> UNet2DModel:
    kw = unet_kwargs("tiny", block_out_channels=[32, 32, 64, 64], attention_levels=[3])
    return UNet2DModel(sample_size=size, in_channels=in_channels, out_channels=out_channels, **kw)


def save_pipeline(folder: Path, pipeline_cls, scheduler, **unet_kw) -> Path:
    torch.manual_seed(0)
    pipeline_cls(unet=tiny_unet(**unet_kw), scheduler=scheduler).save_pretrained(folder)
    return folder


# (pipeline, scheduler, abar_t of the schedule at t = 0, 50, 250, 999 by its closed form)
def _linear(b0, b1, n=1000):
    return [b0 + (b1 - b0) * k / (n - 1) for k in range(n)]


def _scaled_linear(b0, b1, n=1000):
    return [(math.sqrt(b0) + (math.sqrt(b1) - math.sqrt(b0)) * k / (n - 1)) ** 2 for k in range(n)]


def _cosine(n=1000, s=0.008):  # Nichol & Dhariwal 2021, betas clipped at 0.999
    f = [math.cos((k / n + s) / (1 + s) * math.pi / 2) ** 2 for k in range(n + 1)]
    return [min(1 - f[k + 1] / f[k], 0.999) for k in range(n)]


FORMATS = {
    "ddpm-linear-epsilon": (
        DDPMPipeline,
        lambda: DDPMScheduler(beta_schedule="linear"),
        _linear(1e-4, 0.02),
    ),
    "ddpm-cosine-v": (
        DDPMPipeline,
        lambda: DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
        _cosine(),
    ),
    "ddim-scaled-linear-sample": (
        DDIMPipeline,
        lambda: DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="sample",
        ),
        _scaled_linear(0.00085, 0.012),
    ),
}


@pytest.mark.parametrize("name", FORMATS)
def test_pipeline_folder_is_a_teacher_with_its_own_schedule(tmp_path, name):
    pipeline_cls, make_scheduler, betas = FORMATS[name]
    scheduler = make_scheduler()
    folder = save_pipeline(tmp_path / name, pipeline_cls, scheduler)
    teacher = load_teacher(folder, t=[50])
    assert isinstance(teacher, DiffusionTeacher) and teacher.source.startswith("pipeline ")
    assert type(teacher.scheduler) is type(scheduler)
    assert teacher.scheduler.config.prediction_type == scheduler.config.prediction_type
    abar = [math.prod(1 - b for b in betas[: t + 1]) for t in (0, 50, 250, 999)]
    got = teacher.alphas_cumprod[[0, 50, 250, 999]].double()
    assert torch.allclose(got, torch.tensor(abar, dtype=torch.float64), rtol=1e-4, atol=1e-7)
    # the resolution comes from the UNet's sample_size; the saved weights are the ones read
    assert teacher.image_size == [32, 32]
    saved = UNet2DModel.from_pretrained(folder / "unet").state_dict()
    assert all(torch.equal(v, teacher.unet.state_dict()[k]) for k, v in saved.items())
    assert_teacher_contract(teacher, 32, 32)


def test_schedules_change_the_features(tmp_path):
    """Same weights, same noise, two schedules: x_t differs, so the features do."""
    a = load_teacher(
        save_pipeline(tmp_path / "a", DDPMPipeline, FORMATS["ddpm-linear-epsilon"][1]()), t=[250]
    )
    b = load_teacher(
        save_pipeline(tmp_path / "b", DDPMPipeline, FORMATS["ddpm-cosine-v"][1]()), t=[250]
    )
    x = torch.rand(1, 3, 32, 32)
    fa, fb = a(x, keys=[1]), b(x, keys=[1])
    assert not torch.allclose(fa[0], fb[0], atol=1e-4)


def test_learned_variance_unet_loads_and_samples(tmp_path):
    """6 output channels (ADM-style learned sigma): features as usual, the sampler reads the
    first three."""
    folder = save_pipeline(tmp_path / "p", DDPMPipeline, DDPMScheduler(), out_channels=6)
    teacher = load_teacher(folder)
    assert_teacher_contract(teacher, 32, 32)
    imgs = sample_images(teacher.unet, teacher.scheduler, 2, [32, 32], steps=2)
    assert imgs.shape == (2, 3, 32, 32) and imgs.min() >= 0 and imgs.max() <= 1


def test_bare_unet_folder_reads_its_sample_size(tmp_path):
    tiny_unet(size=48).save_pretrained(tmp_path / "u48")
    teacher = load_teacher(tmp_path / "u48")
    assert teacher.source.startswith("unet ") and teacher.image_size == [48, 48]
    assert teacher.scheduler.config.num_train_timesteps == 1000  # the standard linear DDPM
    unet = tiny_unet()
    unet.register_to_config(sample_size=None)
    unet.save_pretrained(tmp_path / "unsized")
    with pytest.raises(UserError, match="does not say its resolution; pass --image-size"):
        load_teacher(tmp_path / "unsized").input_size()


def _edit_json(file: Path, **changes):
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


def test_unsupported_folders_are_one_line_errors(tmp_path):
    folder = save_pipeline(tmp_path / "p", DDPMPipeline, DDPMScheduler())
    cases = []

    def case(name, edit, match):
        f = tmp_path / name
        import shutil

        shutil.copytree(folder, f)
        edit(f)
        cases.append((f, match))

    case(
        "no-sched",
        lambda f: (f / "scheduler" / "scheduler_config.json").unlink(),
        "has no scheduler/scheduler_config.json",
    )
    case(
        "ve",
        lambda f: ScoreSdeVeScheduler().save_pretrained(f / "scheduler"),
        "ScoreSdeVeScheduler .* has no alphas_cumprod",
    )
    case(
        "pred",
        lambda f: _edit_json(f / "scheduler" / "scheduler_config.json", prediction_type="flow"),
        "prediction_type 'flow'; supported: epsilon, v_prediction, sample",
    )
    case(
        "cls",
        lambda f: _edit_json(
            f / "scheduler" / "scheduler_config.json", _class_name="NoSuchScheduler"
        ),
        "'NoSuchScheduler', which is not a diffusers scheduler",
    )
    case(
        "sched-json",
        lambda f: (f / "scheduler" / "scheduler_config.json").write_text("[1]"),
        "cannot read .*scheduler_config.json",
    )
    case(
        "latent",
        lambda f: tiny_unet(in_channels=4, out_channels=4).save_pretrained(f / "unet"),
        "maps 4 to 4 channels; a pixel-space teacher maps RGB to 3",
    )
    for f, match in cases:
        with pytest.raises(UserError, match=match) as e:
            load_teacher(f)
        assert "\n" not in str(e.value)


def test_a_conditional_unet_without_vae_is_refused_by_name(tmp_path):
    tiny_sd_unet().save_pretrained(tmp_path / "sd" / "unet")
    (tmp_path / "sd" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(UserError, match="holds a UNet2DConditionModel; .* with vae/ beside it"):
        load_teacher(tmp_path / "sd")


def tiny_sd_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=4,
    )


def save_tiny_sd(folder: Path) -> Path:
    """A Stable Diffusion pipeline folder of tiny random parts (VAE of 4 levels: latents at
    1/8; UNet of 4 levels; CLIP text encoder and a tokenizer of a 28-token vocabulary),
    written by StableDiffusionPipeline.save_pretrained."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    vocab_dir = folder.parent / (folder.name + "-vocab")
    vocab_dir.mkdir(parents=True)
    words = [c + "</w>" for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab = {w: k for k, w in enumerate([*words, "<|startoftext|>", "<|endoftext|>"])}
    (vocab_dir / "vocab.json").write_text(json.dumps(vocab))
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), model_max_length=8
    )
    eos = vocab["<|endoftext|>"]
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=8,
            bos_token_id=vocab["<|startoftext|>"], eos_token_id=eos, pad_token_id=eos,
        )
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
    )
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=tiny_sd_unet(),
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return save_tiny_sd(tmp_path_factory.mktemp("sd") / "sd")


SD_STRIDES = [8, 16, 32]


def test_stable_diffusion_folder_is_a_teacher(sd_folder):
    from dreamteacher.teachers.latent import LatentDiffusionTeacher

    teacher = load_teacher(sd_folder, t=[250], strides=SD_STRIDES)
    assert isinstance(teacher, LatentDiffusionTeacher) and teacher.source.startswith("sd ")
    # latents are 1/8 of the image: the 4 up blocks sit at image strides 64, 32, 16, 8
    assert teacher.block_strides == [64, 32, 16, 8] and teacher.min_divisor == 64
    assert teacher.channels == [32, 32, 64] and teacher.image_size == [64, 64]
    assert teacher.tap_description() == [
        "stride 8: up_blocks[3].attentions[-1]",
        "stride 16: up_blocks[2].attentions[-1]",
        "stride 32: up_blocks[1].attentions[-1]",
    ]
    assert_teacher_contract(teacher, 64, 64, strides=SD_STRIDES)
    # the schedule is the folder's (scaled linear), the prompt the empty one (1 x 8 x 32)
    betas = _scaled_linear(0.00085, 0.012)
    abar = math.prod(1 - b for b in betas[:251])
    assert abs(float(teacher.alphas_cumprod[250]) - abar) < 1e-6
    assert teacher.prompt_embeds.shape == (1, 8, 32)
    with pytest.raises(UserError, match=r"none is 4; read strides it has \(e.g. strides=\[8, 16"):
        load_teacher(sd_folder)


def test_stable_diffusion_features_by_hand(sd_folder):
    """The maps equal a hand-run of the parts: VAE mean x scaling factor, noise at t by the
    folder's schedule, a full UNet pass on the empty prompt, hooked at the taps."""
    teacher = load_teacher(sd_folder, t=[250], strides=SD_STRIDES)
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(3)
    feats = teacher(x)
    torch.manual_seed(3)
    t = torch.tensor([250, 250])[torch.randint(1, (2,))]
    z = teacher.vae.encode(x * 2 - 1).latent_dist.mean * teacher.vae.config.scaling_factor
    ab = teacher.alphas_cumprod[t].view(2, 1, 1, 1)
    zt = ab.sqrt() * z + (1 - ab).sqrt() * torch.randn_like(z)
    got, hooks = {}, []
    for hk in teacher._hooks:
        hk.remove()
    for i in (1, 2, 3):
        layer = teacher.unet.up_blocks[i].attentions[-1]
        hooks.append(layer.register_forward_hook(lambda m, a, o, i=i: got.__setitem__(i, o[0])))
    with torch.no_grad():
        teacher.unet(zt, t, encoder_hidden_states=teacher.prompt_embeds.expand(2, -1, -1))
    for f, i in zip(feats, (3, 2, 1), strict=True):
        assert torch.allclose(f, got[i], atol=1e-5)


def test_stable_diffusion_prompt_from_a_file(sd_folder, tmp_path):
    """Without text_encoder/ and tokenizer/, prompt_embeds.pt gives the same teacher; without
    either, a one-line error names both."""
    import shutil

    ref = load_teacher(sd_folder, strides=SD_STRIDES)
    folder = tmp_path / "sd"
    shutil.copytree(sd_folder, folder)
    shutil.rmtree(folder / "text_encoder")
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(UserError, match="no text_encoder/ and tokenizer/ .* prompt_embeds.pt"):
        load_teacher(folder, strides=SD_STRIDES)
    torch.save(ref.prompt_embeds.clone(), folder / "prompt_embeds.pt")
    teacher = load_teacher(folder, strides=SD_STRIDES)
    x = torch.rand(1, 3, 64, 64)
    for a, b in zip(ref(x, keys=[5]), teacher(x, keys=[5]), strict=True):
        assert torch.equal(a, b)
    torch.save(torch.zeros(1, 8, 16), folder / "prompt_embeds.pt")
    with pytest.raises(UserError, match="width 16, the UNet attends to 32"):
        load_teacher(folder, strides=SD_STRIDES)


def test_pretrain_from_a_stable_diffusion_folder(sd_folder, scenes, tmp_path):
    """Distillation at strides 8-32 (the student's C3..C5) end to end, two steps."""
    import dreamteacher as dt

    run = dt.pretrain(
        data=str(scenes), teacher=str(sd_folder), out=str(tmp_path / "pre"), strides=SD_STRIDES,
        image_size=[64], batch_size=2, max_steps=2, epochs=1, device="cpu", log_every=1,
    )  # fmt: skip
    from tests.conftest import read_log

    losses = [r["loss"] for r in read_log(run)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
