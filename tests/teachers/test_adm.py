"""ADM (guided-diffusion / improved-diffusion) checkpoints: flags, the strict key mapping, the
legacy qkv layout, and numeric agreement with a diffusers UNet2DModel of the same design."""

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from dreamteacher.errors import UserError
from dreamteacher.teachers import DiffusionTeacher, load_teacher, teacher_files
from dreamteacher.teachers.adm import (
    ADMFlags,
    ADMTeacher,
    ADMUNet,
    Attention,
    adm_betas,
    adm_scheduler,
    adm_state_dict,
    parse_flags,
)
from dreamteacher.teachers.diffusion import build_scheduler
from tests.teachers.test_contract import assert_teacher_contract

README_FLAGS = """MODEL_FLAGS="--attention_resolutions 32,16,8 --class_cond False
--diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear
--num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True
--use_scale_shift_norm True"
python scripts/image_sample.py $MODEL_FLAGS --model_path models/lsun_cat.pt --batch_size=4
"""


def test_flags_from_a_readme_line():
    f = parse_flags(README_FLAGS)
    assert (f.image_size, f.num_channels, f.num_head_channels, f.num_res_blocks) == (
        256,
        256,
        64,
        2,
    )
    assert f.learn_sigma and f.resblock_updown and f.use_scale_shift_norm
    assert f.mults() == [1, 1, 2, 2, 4, 4]  # the scripts' choice for 256 px
    assert f.attention_strides() == {8, 16, 32}
    assert not f.use_new_attention_order and f.num_heads_upsample == -1  # defaults
    assert parse_flags("--num_heads_upsample=-1 --image_size 64").mults() == [1, 2, 3, 4]
    # improved-diffusion's CIFAR-10 flags; the classifier's flags of a sampling command skipped
    cifar = parse_flags(
        "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma False "
        "--dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine --rescale_timesteps True "
        "--sigma_small True --classifier_depth 4 --classifier_scale 1.0"
    )
    assert cifar.mults() == [1, 2, 2, 2] and cifar.rescale_timesteps and cifar.sigma_small
    assert adm_scheduler(cifar).config.variance_type == "fixed_small"  # beta-tilde
    assert adm_scheduler(ADMFlags()).config.variance_type == "fixed_large"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("--image_size 256 --num_layers 3", "unknown flag --num_layers"),
        ("--learn_sigma maybe", "--learn_sigma maybe is not a bool"),
        ("--num_channels wide", "is not an int"),
        ("--class_cond True", "class-conditional"),
        ("--noise_schedule sqrt", "supported: linear, cosine"),
        ("--image_size 96", "no default channel_mult"),
        ("--image_size 90 --channel_mult 1,2,2", "not divisible by 4"),
        ("--image_size", "has no value"),
    ],
)
def test_bad_flags_are_one_line_errors(text, match):
    with pytest.raises(UserError, match=match) as e:
        parse_flags(text, "run/flags.txt")
    assert "\n" not in str(e.value) and "run/flags.txt" in str(e.value)


def test_schedules_follow_the_closed_forms():
    lin = adm_betas(ADMFlags(diffusion_steps=4000))  # scaled by 1000 / steps
    assert lin[0].item() == pytest.approx(2.5e-5) and lin[-1].item() == pytest.approx(5e-3)
    cos = adm_betas(ADMFlags(noise_schedule="cosine", diffusion_steps=1000))
    abar = torch.cumprod(1 - cos, 0)
    for t in (0, 250, 500, 900):  # abar(t) = f(t) / f(0), f(t) = cos((t/T + s) / (1 + s) pi/2)^2
        f = [math.cos((v / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for v in (t + 1, 0)]
        assert abar[t].item() == pytest.approx(f[0] / f[1], rel=1e-6)
    assert cos.max().item() == pytest.approx(0.999)  # clipped at the end


# --- a diffusers UNet2DModel of ADM's design, and its weights in the ADM checkpoint format ----

DESIGNS = {
    # attention at the 16 px level of a 32 px model, conv resampling, added time embedding
    "conv": dict(
        diffusers=dict(
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            resnet_time_scale_shift="default",
        ),
        flags="--attention_resolutions 16 --use_scale_shift_norm False",
    ),
    # attention at every level, resampling ResBlocks, scale-shift norm (the LSUN models' design)
    "resblock_updown": dict(
        diffusers=dict(
            down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
            resnet_time_scale_shift="scale_shift",
            downsample_type="resnet",
            upsample_type="resnet",
        ),
        flags="--attention_resolutions 32,16 --use_scale_shift_norm True --resblock_updown True",
    ),
}
COMMON_FLAGS = (
    "--image_size 32 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --num_head_channels 32"
)


def diffusers_unet(design: str) -> UNet2DModel:
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32,
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=32,
        norm_num_groups=32,
        flip_sin_to_cos=True,
        freq_shift=0,
        **DESIGNS[design]["diffusers"],
    )
    mid = unet.mid_block.attentions[0]
    if mid.group_norm is None:  # diffusers drops it with scale-shift resnets; ADM keeps it
        mid.group_norm = torch.nn.GroupNorm(32, 64, affine=True)
    with torch.no_grad():  # no zero-initialised layers: every weight must matter
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.eval()


def _resnet(src: dict, a: str, b: str) -> dict:
    names = {
        "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
        "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
    }  # fmt: skip
    return {
        f"{b}.{names[k[len(a) + 1 :].split('.')[0]]}.{k.rsplit('.', 1)[1]}": v
        for k, v in src.items()
        if k.startswith(a + ".")
    }


def _attention(src: dict, a: str, b: str, legacy_head_dim: int = 0) -> dict:
    out = {f"{b}.norm.{p}": src[f"{a}.group_norm.{p}"] for p in ("weight", "bias")}
    for p in ("weight", "bias"):
        q, k, v = (src[f"{a}.to_{n}.{p}"] for n in "qkv")
        if legacy_head_dim:  # per head: q_h, k_h, v_h
            heads = len(q) // legacy_head_dim
            parts = [t.chunk(heads) for t in (q, k, v)]
            qkv = torch.cat(
                [x for h in range(heads) for x in (parts[0][h], parts[1][h], parts[2][h])]
            )
        else:
            qkv = torch.cat([q, k, v])
        out[f"{b}.qkv.{p}"] = qkv[..., None] if p == "weight" else qkv
        o = src[f"{a}.to_out.0.{p}"]
        out[f"{b}.proj_out.{p}"] = o[..., None] if p == "weight" else o
    return out


def to_adm_checkpoint(unet: UNet2DModel, legacy_head_dim: int = 0) -> dict:
    """The diffusers weights under ADM's parameter names (a hand-written map, the test's own)."""
    sd = unet.state_dict()
    ck = {}

    def copy(a: str, b: str):
        for p in ("weight", "bias"):
            ck[f"{b}.{p}"] = sd[f"{a}.{p}"]

    copy("time_embedding.linear_1", "time_embed.0")
    copy("time_embedding.linear_2", "time_embed.2")
    copy("conv_in", "input_blocks.0.0")
    j = 1
    for i, blk in enumerate(unet.down_blocks):
        for r in range(len(blk.resnets)):
            ck |= _resnet(sd, f"down_blocks.{i}.resnets.{r}", f"input_blocks.{j}.0")
            if getattr(blk, "attentions", None):
                ck |= _attention(
                    sd, f"down_blocks.{i}.attentions.{r}", f"input_blocks.{j}.1", legacy_head_dim
                )
            j += 1
        if blk.downsamplers is not None:
            if hasattr(blk.downsamplers[0], "norm1"):
                ck |= _resnet(sd, f"down_blocks.{i}.downsamplers.0", f"input_blocks.{j}.0")
            else:
                copy(f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{j}.0.op")
            j += 1
    ck |= _resnet(sd, "mid_block.resnets.0", "middle_block.0")
    ck |= _attention(sd, "mid_block.attentions.0", "middle_block.1", legacy_head_dim)
    ck |= _resnet(sd, "mid_block.resnets.1", "middle_block.2")
    j = 0
    for i, blk in enumerate(unet.up_blocks):
        attn = bool(getattr(blk, "attentions", None))
        for r in range(len(blk.resnets)):
            ck |= _resnet(sd, f"up_blocks.{i}.resnets.{r}", f"output_blocks.{j}.0")
            if attn:
                ck |= _attention(
                    sd, f"up_blocks.{i}.attentions.{r}", f"output_blocks.{j}.1", legacy_head_dim
                )
            j += 1
        if blk.upsamplers is not None:
            k = 2 if attn else 1
            if hasattr(blk.upsamplers[0], "norm1"):
                ck |= _resnet(sd, f"up_blocks.{i}.upsamplers.0", f"output_blocks.{j - 1}.{k}")
            else:
                copy(f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{j - 1}.{k}.conv")
    copy("conv_norm_out", "out.0")
    copy("conv_out", "out.2")
    return ck


def save_adm(folder: Path, state: dict, flags: str, name: str = "model.pt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / name)
    (folder / "flags.txt").write_text(flags + "\n")
    return folder


@pytest.mark.parametrize("design", list(DESIGNS))
@pytest.mark.parametrize("order", ["new", "legacy"])
def test_adm_matches_the_diffusers_unet_of_the_same_design(tmp_path, design, order):
    ref = diffusers_unet(design)
    legacy = order == "legacy"
    flags = f"{COMMON_FLAGS} {DESIGNS[design]['flags']} --use_new_attention_order {not legacy}"
    # 32 channels per head: one head at 32 channels and two at 64, so the layouts differ
    folder = save_adm(tmp_path / "adm", to_adm_checkpoint(ref, legacy_head_dim=32 * legacy), flags)
    teacher = load_teacher(folder, t=[100], strides=[1, 2])
    assert teacher.source == f"adm {folder}"
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 700])
    with torch.no_grad():
        assert torch.allclose(teacher.unet(x, t), ref(x, t).sample, atol=1e-4)
    # the features are those the diffusers teacher reads at the same levels
    twin = DiffusionTeacher(ref, build_scheduler(), t=[100], strides=[1, 2])
    img = torch.rand(2, 3, 32, 32)
    for a, b in zip(teacher(img, keys=[3, 4]), twin(img, keys=[3, 4]), strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)
    assert teacher.tap_description()[1].startswith("stride 2: output_blocks[1]")


def test_the_legacy_qkv_layout_by_hand():
    torch.manual_seed(0)
    C, heads, d, T = 64, 2, 32, 6
    w, b = torch.randn(3 * C, C, 1) / 8, torch.randn(3 * C)
    proj_w, proj_b = torch.randn(C, C, 1) / 8, torch.randn(C)
    x = torch.randn(1, C, 2, 3)
    # legacy semantics, written out: head h owns rows [h*3d, (h+1)*3d) as q_h, k_h, v_h
    n = F.group_norm(x.reshape(1, C, T), 32)
    qkv = F.conv1d(n, w, b)[0]  # 3C, T
    outs = []
    for h in range(heads):
        q, k, v = qkv[h * 3 * d : (h + 1) * 3 * d].split(d)  # each d, T
        att = torch.softmax(q.T @ k / math.sqrt(d), dim=-1)  # T (queries), T (keys)
        outs.append(v @ att.T)  # d, T
    want = x + F.conv1d(torch.cat(outs)[None], proj_w, proj_b).reshape(1, C, 2, 3)

    class One(ADMUNet):  # a module tree holding a single attention block, for the mapping
        def __init__(self, flags):
            torch.nn.Module.__init__(self)
            self.flags, self.block = flags, Attention(C, heads)

    state = {
        "block.norm.weight": torch.ones(C), "block.norm.bias": torch.zeros(C),
        "block.qkv.weight": w, "block.qkv.bias": b,
        "block.proj_out.weight": proj_w, "block.proj_out.bias": proj_b,
    }  # fmt: skip
    for new_order, close in ((False, True), (True, False)):
        m = One(ADMFlags(use_new_attention_order=new_order))
        m.load_state_dict(adm_state_dict(m, dict(state), Path("x.pt")), strict=True)
        with torch.no_grad():
            assert torch.allclose(m.block(x), want, atol=1e-5) == close  # the layout matters


def test_learned_sigma_and_cosine_checkpoint_pass_the_teacher_contract(tmp_path):
    flags = ADMFlags(
        image_size=32, num_channels=32, channel_mult="1,2,2", num_res_blocks=1,
        attention_resolutions="8", learn_sigma=True, noise_schedule="cosine", num_heads=2,
    )  # fmt: skip
    torch.manual_seed(0)
    unet = ADMUNet(flags)
    assert unet.out[-1].out_channels == 6
    text = " ".join(f"--{k} {v}" for k, v in vars(flags).items() if v != "")
    folder = save_adm(tmp_path / "adm", unet.state_dict(), text)
    teacher = load_teacher(folder, t=[50, 150], strides=[4, 8, 16, 32])
    assert teacher.channels == [64, 64, 64, 64] and teacher.min_divisor == 4
    assert teacher.derived == {8: 4, 16: 4, 32: 4}  # coarser than the UNet: pooled level 4
    want = torch.cumprod(1 - adm_betas(flags), 0).float()
    assert torch.allclose(teacher.alphas_cumprod, want, rtol=1e-5)
    assert_teacher_contract(teacher, 32, 32, strides=[4, 8, 16, 32])
    assert_teacher_contract(load_teacher(folder, strides=[1, 2, 4]), 32, 32, strides=[1, 2, 4])
    assert sorted(p.name for p in teacher_files(folder)) == ["flags.txt", "model.pt"]
    # the pass stops after the finest level read: a view at stride 4 skips the finer blocks
    calls = []
    hook = teacher.unet.output_blocks[-1].register_forward_hook(lambda *a: calls.append(1))
    x = torch.rand(1, 3, 32, 32)
    teacher.view([4])(x)
    assert not calls
    teacher.view([1])(x)
    assert calls == [1]
    hook.remove()


class Boom:  # a pickle that would run a shell command if unpickled freely
    def __reduce__(self):
        return (print, ("code ran",))


def test_bad_folders_and_files_are_one_line_errors(tmp_path):
    flags = f"{COMMON_FLAGS} {DESIGNS['conv']['flags']}"
    good = to_adm_checkpoint(diffusers_unet("conv"), legacy_head_dim=32)

    def expect(folder: Path, match: str):
        with pytest.raises(UserError, match=match) as e:
            load_teacher(folder)
        assert "\n" not in str(e.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "flags.txt").write_text(flags)
    expect(empty, "no .pt checkpoint")
    no_flags = tmp_path / "no_flags"
    no_flags.mkdir()
    torch.save(good, no_flags / "model.pt")
    expect(no_flags, re.escape("or an ADM .pt with its flags.txt"))
    two = save_adm(tmp_path / "two", good, flags)
    torch.save(good, two / "ema.pt")
    expect(two, "holds 2 .pt files")
    expect(save_adm(tmp_path / "blocks", good, flags + " --num_res_blocks 2"), "missing keys")
    expect(
        save_adm(tmp_path / "width", good, flags + " --num_channels 64"),
        "but flags.txt gives \\(256, 64\\)",
    )
    expect(save_adm(tmp_path / "sigma", good, flags + " --learn_sigma True"), "out.2.weight")
    extra = dict(good, **{"label_emb.weight": torch.zeros(10, 128)})
    expect(save_adm(tmp_path / "extra", extra, flags), "1 unexpected \\(first label_emb.weight\\)")
    expect(save_adm(tmp_path / "code", {"x": Boom()}, flags), "without running code")
    bad = save_adm(tmp_path / "bad", good, flags)
    (bad / "model.pt").write_bytes(b"not a zip")
    expect(bad, "damaged or not a PyTorch checkpoint")
    # a DistributedDataParallel state dict ('module.' prefix) loads
    ddp = save_adm(tmp_path / "ddp", {f"module.{k}": v for k, v in good.items()}, flags)
    plain = save_adm(tmp_path / "plain", good, flags)
    a, b = load_teacher(ddp).unet.state_dict(), load_teacher(plain).unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pretrain_from_an_adm_folder_through_the_cli(scenes, tmp_path):
    """`pretrain --teacher ADM_FOLDER`: the student regresses the ADM's levels, two steps."""
    from dreamteacher import cli
    from tests.conftest import read_log

    flags = f"{COMMON_FLAGS} {DESIGNS['resblock_updown']['flags']} --learn_sigma False"
    state = to_adm_checkpoint(diffusers_unet("resblock_updown"), legacy_head_dim=32)
    folder = save_adm(tmp_path / "adm", state, flags)
    out = tmp_path / "pre"
    rc = cli.main(
        ["pretrain", "--data", str(scenes), "--teacher", str(folder), "--out", str(out),
         "--batch-size", "2", "max_steps=2", "epochs=1", "log_every=1"]
    )  # fmt: skip
    assert rc in (0, None)
    losses = [r["loss"] for r in read_log(out)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert f"teacher: {folder}" in (out / "config.yaml").read_text()


def test_rescaled_timesteps_reach_the_network_on_a_1000_scale():
    """improved-diffusion's --rescale_timesteps: with 4000 steps the network sees t / 4."""
    torch.manual_seed(0)
    kw = dict(image_size=32, num_channels=32, channel_mult="1,2", num_res_blocks=1,
              diffusion_steps=4000, noise_schedule="cosine")  # fmt: skip
    unet = ADMUNet(ADMFlags(**kw, rescale_timesteps=True))
    teacher = ADMTeacher(unet, t=[400], strides=[1, 2])
    xt, t = torch.randn(1, 3, 32, 32), torch.tensor([400])
    got = teacher._forward_taps(xt, t)
    with torch.no_grad():
        want = unet.decoder_levels(xt, torch.tensor([100.0]), 1)
        raw = unet.decoder_levels(xt, t, 1)
    # got: strides 1, 2 (taps 1, 0); decoder_levels: coarse to fine
    assert torch.allclose(got[0], want[1]) and torch.allclose(got[1], want[0])
    assert not torch.allclose(got[0], raw[1], atol=1e-3)
