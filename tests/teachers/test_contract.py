"""The teacher contract: every registered teacher, in several configurations, returns a list of
NCHW maps matching its `channels` and `strides`, is frozen, and encodes stochastically."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

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
        {"image_size": [64, 80], "preset": "tiny"},  # 64x80: a 4x5 stride-16 map, odd width
    ],
    "gan": [
        # blocks of strides 8, 4, 2, 1: strides 16 and 32 pooled from the 4x4 block
        {
            "image_size": [32, 32],
            "z_dim": 16,
            "w_dim": 16,
            "mapping_layers": 2,
            "channel_base": 512,
            "channel_max": 32,
        },
        # non-square, 5 blocks (4x5 .. 64x80): stride 32 pooled to 2x3
        {
            "image_size": [64, 80],
            "z_dim": 16,
            "w_dim": 16,
            "mapping_layers": 1,
            "channel_base": 1024,
            "channel_max": 64,
        },
    ],
}


def test_every_registered_teacher_has_configs():
    assert set(list_teachers()) <= set(CONFIGS)


CASES = [(name, cfg) for name in list_teachers() for cfg in CONFIGS[name]]


def assert_teacher_contract(teacher, h: int, w: int, strides=(4, 8, 16, 32)) -> None:
    """What every teacher, however made or loaded, must do at an input of h x w."""
    x = torch.rand(2, 3, h, w)
    feats = teacher(x)
    assert isinstance(feats, list) and len(feats) == len(teacher.channels) == len(teacher.strides)
    assert teacher.strides == list(strides)
    for f, c, s in zip(feats, teacher.channels, teacher.strides, strict=True):
        assert f.shape == (2, c, -(-h // s), -(-w // s)), (f.shape, c, s)  # ceil(H/s)
        assert torch.isfinite(f).all()
    assert not any(p.requires_grad for p in teacher.parameters())
    # it knows the size it is made for, and refuses one its UNet cannot take
    assert teacher.input_size() == [h, w] and teacher.input_size([h * 2, w]) == [h * 2, w]
    with pytest.raises(UserError, match=f"not divisible by {teacher.min_divisor}"):
        teacher.input_size([h + teacher.min_divisor // 2, w])
    teacher.train()
    assert not teacher.training  # stays in eval mode
    again = teacher(x)  # fresh noise each call: stochastic encoding
    assert not torch.allclose(feats[0], again[0])
    # a sample's key fixes its t and noise, whatever the batch around it
    keyed = teacher(x, keys=[7, 8])
    alone = teacher(x[1:], keys=[8])
    for a, b in zip(keyed, alone, strict=True):
        assert torch.allclose(a[1:], b, atol=1e-5)


def assert_gan_contract(teacher, h: int, w: int, strides=(4, 8, 16, 32)) -> None:
    """What every GAN teacher must do: synthesize h x w images from keys, with one NCHW map
    per stride, frozen; a key fixes its sample whatever the batch around it."""
    images, feats = teacher.sample([1, 2])
    assert images.shape == (2, 3, h, w) and images.min() >= 0 and images.max() <= 1
    assert isinstance(feats, list) and len(feats) == len(teacher.channels) == len(teacher.strides)
    assert teacher.strides == list(strides)
    for f, c, s in zip(feats, teacher.channels, teacher.strides, strict=True):
        assert f.shape == (2, c, -(-h // s), -(-w // s)), (f.shape, c, s)
        assert torch.isfinite(f).all()
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training
    again_images, again = teacher.sample([1, 2])  # seeded: the same keys, the same samples
    assert torch.equal(images, again_images) and all(map(torch.equal, feats, again))
    alone_images, alone = teacher.sample([2])
    assert torch.allclose(alone_images, images[1:], atol=1e-5)
    for a, b in zip(feats, alone, strict=True):
        assert torch.allclose(a[1:], b, atol=1e-5)
    other, _ = teacher.sample([3])
    assert not torch.allclose(other, images[1:])
    # features(x, keys): those of its own images of the keys (x gives the batch only)
    assert all(map(torch.equal, teacher(torch.rand(2, 3, h, w), keys=[1, 2]), feats))
    assert teacher.input_size() == [h, w]
    with pytest.raises(UserError, match=f"synthesizes {h}x{w} images"):
        teacher.input_size([h * 2, w])


@pytest.mark.parametrize(("name", "cfg"), CASES)
def test_teacher_contract(name, cfg):
    torch.manual_seed(0)
    teacher = create_teacher(name, **cfg)
    if getattr(teacher, "synthetic", False):
        assert_gan_contract(teacher, *cfg["image_size"])
    else:
        assert_teacher_contract(teacher, *cfg["image_size"])


def _skip_unet():
    """An NCSN++-style UNet (Skip blocks, Fourier time embedding): read through hooks."""
    return UNet2DModel(
        sample_size=32,
        block_out_channels=(32, 32, 64, 64, 64),
        layers_per_block=1,
        down_block_types=("SkipDownBlock2D",) * 3 + ("AttnSkipDownBlock2D",) * 2,
        up_block_types=("AttnSkipUpBlock2D",) * 2 + ("SkipUpBlock2D",) * 3,
        norm_num_groups=8,
        time_embedding_type="fourier",
    )


def _resnet_sampling_unet():
    """Plain blocks whose down/upsamplers are ResNet blocks (they take the time embedding)."""
    from dreamteacher.teachers.diffusion import unet_kwargs

    kw = unet_kwargs("tiny")
    return UNet2DModel(sample_size=32, upsample_type="resnet", downsample_type="resnet", **kw)


def _teacher(cfg):
    from dreamteacher.teachers.diffusion import build_scheduler

    if cfg == "skip":
        return DiffusionTeacher(_skip_unet(), build_scheduler())
    if cfg == "resnet-sampling":
        return DiffusionTeacher(_resnet_sampling_unet(), build_scheduler())
    return create_teacher("diffusion", **cfg)


TAP_CASES = [*CONFIGS["diffusion"], "skip", "resnet-sampling"]


@pytest.mark.parametrize("cfg", TAP_CASES)
def test_taps_equal_a_full_unet_pass_read_before_each_upsampler(cfg):
    """Features equal those of a full, unmodified UNet pass hooked at the last layer of each
    tapped up block (attentions[-1], else resnets[-1]): the written-out pass of plain UNets
    and the hooked pass of the others both stop early without changing anything."""
    torch.manual_seed(0)
    teacher = _teacher(cfg)
    assert teacher.plain == (cfg != "skip")
    unet = teacher.unet
    h, w = (32, 32) if isinstance(cfg, str) else cfg["image_size"]
    x = torch.rand(2, 3, h, w)
    torch.manual_seed(5)
    feats = teacher(x)
    # recompute by hand with the same t and noise, full forward, independent hooks
    torch.manual_seed(5)
    t = torch.tensor([50, 50])[torch.randint(1, (2,))]
    ab = teacher.alphas_cumprod[t].view(2, 1, 1, 1)
    xt = ab.sqrt() * (2 * x - 1) + (1 - ab).sqrt() * torch.randn_like(x)
    for hk in teacher._hooks:  # the hooked path's own hooks would stop the pass
        hk.remove()
    got, hooks = {}, []
    for i in set(teacher.taps):
        blk = unet.up_blocks[i]
        layer = blk.attentions[-1] if getattr(blk, "attentions", None) else blk.resnets[-1]
        hooks.append(layer.register_forward_hook(lambda m, a, o, i=i: got.__setitem__(i, o)))
    with torch.no_grad():
        out = unet(xt, t).sample
    assert out.shape == x.shape  # the full pass ran to the end
    for f, s, i in zip(feats, teacher.strides, teacher.taps, strict=True):
        k = s // teacher.derived.get(s, s)
        ref = got[i] if s not in teacher.derived else F.avg_pool2d(got[i], k, ceil_mode=True)
        assert f.shape == ref.shape
        assert torch.allclose(f, ref, atol=1e-5), (s, (f - ref).abs().max())
    for hk in hooks:
        hk.remove()


def test_tap_description_names_the_layers():
    teacher = create_teacher("diffusion", image_size=[32, 32], preset="tiny")
    assert teacher.tap_description() == [
        "stride 4: up_blocks[2].resnets[-1]",
        "stride 8: up_blocks[1].resnets[-1]",
        "stride 16: up_blocks[0].attentions[-1]",
        "stride 32: avg_pool(up_blocks[0].attentions[-1])",
    ]


def test_compiled_feature_pass_is_one_graph_and_matches_eager():
    """compile_features hands the whole UNet pass to torch.compile as exactly one graph
    (fullgraph=True fails on any break); same t and noise give the same maps as eager."""
    torch.manual_seed(0)
    teacher = create_teacher("diffusion", image_size=[32, 48], preset="tiny")
    x = torch.rand(2, 3, 32, 48)
    eager = teacher(x, keys=[3, 4])
    graphs = []

    def backend(gm, example_inputs):  # records each graph dynamo captures, runs it as is
        graphs.append(gm)
        return gm.forward

    teacher.compile_features(backend=backend, fullgraph=True)
    compiled = teacher(x, keys=[3, 4])
    assert len(graphs) == 1
    conv = (torch.conv2d, F.conv2d)
    n_conv = sum(n.op == "call_function" and n.target in conv for n in graphs[0].graph.nodes)
    total = sum(isinstance(m, torch.nn.Conv2d) for m in teacher.unet.modules())
    assert total / 2 < n_conv < total  # the UNet's layers, stopped before the finest blocks
    for a, b in zip(eager, compiled, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(UserError, match="compile_teacher=false"):
        _teacher("skip").compile_features()


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
    unet = UNet2DModel.from_pretrained(teacher_run / "unet")
    teacher = load_teacher(teacher_run, t=[50])
    assert isinstance(teacher, DiffusionTeacher)
    sd = teacher.unet.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in unet.state_dict().items())
    assert teacher.source == f"run {teacher_run}"
    # a bare UNet folder also works (the scheduler defaults to 1000-step linear DDPM)
    bare = load_teacher(teacher_run / "unet")
    assert bare.scheduler.config.num_train_timesteps == 1000
    # the run says the size it was trained at (teacher.json); a UNet folder its sample_size
    assert teacher.image_size == [32, 32] and teacher.input_size() == [32, 32]
    assert bare.image_size == [32, 32]


def test_not_a_teacher_folder(tmp_path):
    with pytest.raises(UserError, match="holds no teacher"):
        load_teacher(tmp_path)


def test_a_derived_level_covers_the_whole_image_on_the_students_grid():
    """At 64x80 the stride-32 level is pooled from the 4x5 stride-16 map: it is 2x3 like a
    ResNet's C5, and the map's last column (image columns 64-79) reaches it on its own."""
    from dreamteacher.student import Backbone

    teacher = create_teacher("diffusion", image_size=[64, 80], preset="tiny")
    assert teacher.derived == {32: 16}
    x = torch.rand(1, 3, 64, 80)
    assert Backbone("resnet18")(x)[3].shape[-2:] == (2, 3)
    # the coarsest tapped map: content in its last column only
    coarse = torch.zeros(1, teacher.channels[3], 4, 5)
    coarse[..., -1] = 1.0
    maps = [torch.zeros(1, c, 64 // s, 80 // s) for c, s in zip(teacher.channels, [4, 8, 16])]
    teacher._encode = lambda xt, t: [*maps, coarse]
    target = teacher(x)[3]
    assert target.shape[-2:] == (2, 3)
    assert torch.equal(target[..., -1], torch.ones(1, teacher.channels[3], 2))
    assert not target[..., :2].any()
