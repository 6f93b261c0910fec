"""The teacher contract: every registered teacher, in several configurations, returns a list of
NCHW maps matching its `channels` and `strides`, is frozen, and encodes stochastically."""

import pytest
import torch

from dreamteacher.errors import UserError
from dreamteacher.teachers import DiffusionTeacher, create_teacher, list_teachers, load_teacher

CONFIGS = {
    "diffusion": [
        {"image_size": [32, 32], "preset": "tiny"},  # 5 levels: stride 32 derived by pooling
        {
            "image_size": [32, 48],
            "preset": "tiny",
            "block_out_channels": [32, 32, 64, 64],
            "attention_levels": [],
        },  # 4 levels: strides 16 and 32 derived
        {
            "image_size": [64, 64],
            "preset": "tiny",
            "layers_per_block": 2,
            "block_out_channels": [32, 32, 64, 64, 96, 128],
            "attention_levels": [4, 5],
        },  # 6 levels
    ],
}


def test_every_registered_teacher_has_configs():
    assert set(list_teachers()) <= set(CONFIGS)


CASES = [(name, cfg) for name in list_teachers() for cfg in CONFIGS[name]]


@pytest.mark.parametrize(("name", "cfg"), CASES)
def test_teacher_contract(name, cfg):
    torch.manual_seed(0)
    teacher = create_teacher(name, **cfg)
    h, w = cfg["image_size"]
    x = torch.rand(2, 3, h, w)
    feats = teacher(x)
    assert isinstance(feats, list) and len(feats) == len(teacher.channels) == len(teacher.strides)
    assert teacher.strides == [4, 8, 16, 32]
    for f, c, s in zip(feats, teacher.channels, teacher.strides, strict=True):
        assert f.shape == (2, c, h // s, w // s), (f.shape, c, s)
        assert torch.isfinite(f).all()
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training  # stays in eval mode
    again = teacher(x)  # fresh noise each call: stochastic encoding
    assert not torch.allclose(feats[0], again[0])


def test_taps_are_last_layer_before_upsampler_and_early_stop_is_exact():
    """Features equal those of a full UNet pass hooked at up_blocks[i].resnets/attentions[-1]."""
    torch.manual_seed(0)
    teacher = create_teacher("diffusion", image_size=[32, 32], preset="tiny")
    unet = teacher.unet
    assert teacher.tap_description()[0] == "stride 4: up_blocks[2].resnets[-1]"
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(5)
    feats = teacher(x)
    # recompute by hand with the same t and noise, full forward, independent hooks
    torch.manual_seed(5)
    t = torch.tensor([50, 50])[torch.randint(1, (2,))]
    ab = teacher.alphas_cumprod[t].view(2, 1, 1, 1)
    xt = ab.sqrt() * (2 * x - 1) + (1 - ab).sqrt() * torch.randn_like(x)
    got = {}
    hooks = [
        unet.up_blocks[i]
        .resnets[-1]
        .register_forward_hook(lambda m, a, o, i=i: got.__setitem__(i, o))
        for i in (1, 2)
    ]
    hooks.append(
        unet.up_blocks[0]
        .attentions[-1]
        .register_forward_hook(lambda m, a, o: got.__setitem__(0, o))
    )
    for hk in teacher._hooks:
        hk.remove()
    with torch.no_grad():
        out = unet(xt, t).sample
    assert out.shape == x.shape  # the full pass ran to the end
    assert torch.allclose(feats[0], got[2], atol=1e-5)  # stride 4 = up_blocks[2]
    assert torch.allclose(feats[1], got[1], atol=1e-5)
    assert torch.allclose(feats[2], got[0], atol=1e-5)
    assert torch.allclose(feats[3], torch.nn.functional.avg_pool2d(got[0], 2), atol=1e-5)
    for hk in hooks:
        hk.remove()


def test_multiple_t_draws_per_sample():
    teacher = create_teacher("diffusion", image_size=[32, 32], t=[50, 150, 250])
    assert teacher.t == [50, 150, 250]
    with pytest.raises(UserError, match="t="):
        create_teacher("diffusion", image_size=[32, 32], t=[1000])


def test_size_not_divisible_is_a_clear_error():
    with pytest.raises(UserError, match="not divisible by 16"):
        create_teacher("diffusion", image_size=[40, 40])


def test_load_from_train_teacher_run(teacher_run):
    """A train-teacher folder is diffusers format and loads as a teacher."""
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(teacher_run / "unet")
    teacher = load_teacher(teacher_run, t=[50])
    assert isinstance(teacher, DiffusionTeacher)
    sd = teacher.unet.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in unet.state_dict().items())
    # a bare UNet folder also works (the scheduler defaults to 1000-step linear DDPM)
    bare = load_teacher(teacher_run / "unet")
    assert bare.scheduler.config.num_train_timesteps == 1000


def test_not_a_teacher_folder(tmp_path):
    with pytest.raises(UserError, match="holds no teacher"):
        load_teacher(tmp_path)
