"""inspect-teacher: the tensor-memory counter against hand-computed sizes, and the report of a
diffusers pipeline folder end to end (API and CLI)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

import dreamteacher as dt
from dreamteacher import cli
from dreamteacher.engine.inspect import PeakTensorBytes
from dreamteacher.teachers.diffusion import unet_kwargs

MIB = 2**20


def test_peak_tensor_bytes_by_hand():
    x = torch.ones(MIB // 4)  # 1 MiB of float32, made before counting: not counted
    with PeakTensorBytes() as mode:
        y = x * 2  # 1 MiB
        z = y + 1  # 2 MiB live
        v = z.view(2, -1)  # a view: no new storage
        del y  # 1 MiB live
        w = torch.cat([z, z])  # 1 + 2 = 3 MiB live
    assert mode.peak == 3 * MIB
    assert mode.live == 3 * MIB and v.numel() == z.numel() and w.numel() == 2 * z.numel()
    del z, v, w
    assert mode.live == 0  # frees are counted when the last reference goes


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teachers") / "ddim"
    torch.manual_seed(0)
    kw = unet_kwargs("tiny", block_out_channels=[32, 32, 64, 64], attention_levels=[3])
    unet = UNet2DModel(sample_size=[32, 48], in_channels=3, out_channels=3, **kw)
    sched = DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction")
    DDIMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
    return folder


def test_inspect_a_pipeline_folder(pipeline, tmp_path):
    out = tmp_path / "inspect.json"
    info = dt.inspect_teacher(teacher=str(pipeline), device="cpu", repeats=1, json=str(out))
    assert json.loads(out.read_text()) == json.loads(json.dumps(info))
    assert info["kind"] == "pipeline" and info["model"] == "UNet2DModel"
    assert info["image_size"] == info["trained_size"] == [32, 48]  # from the UNet's sample_size
    unet = UNet2DModel.from_pretrained(pipeline / "unet")
    assert info["parameters"] == sum(p.numel() for p in unet.parameters())
    assert info["weights_bytes"] == 4 * info["parameters"]
    assert info["scheduler"] == {
        "class": "DDIMScheduler",
        "steps": 1000,
        "beta_schedule": "scaled_linear",
        "prediction_type": "v_prediction",
    }
    levels = {lv["stride"]: lv for lv in info["levels"]}
    assert sorted(levels) == [4, 8, 16, 32]
    # a 4-level UNet decodes at strides 8, 4, 2, 1: 16 and 32 are pooled from stride 8
    assert [levels[s]["channels"] for s in (4, 8, 16, 32)] == [64, 64, 64, 64]
    assert [levels[s]["map"] for s in (4, 8, 16, 32)] == [[8, 12], [4, 6], [2, 3], [1, 2]]
    assert levels[4]["layer"] == "up_blocks[1].resnets[-1]"
    assert levels[32]["layer"] == "avg_pool(up_blocks[0].attentions[-1])"
    assert all(lv["seconds"] > 0 for lv in info["levels"])
    # reading a finer level runs more of the decoder: at least the same peak
    assert levels[4]["peak_bytes"] >= levels[8]["peak_bytes"] > 0
    # the stride-4 map of one image alone is 32 x 8 x 12 floats; the peak holds more than it
    assert levels[4]["peak_bytes"] > 32 * 8 * 12 * 4
    # twice the batch, about twice the activations
    two = dt.inspect_teacher(teacher=str(pipeline), device="cpu", repeats=1, batch_size=2)
    ratio = two["levels"][0]["peak_bytes"] / info["levels"][0]["peak_bytes"]
    assert 1.6 < ratio < 2.4, ratio


def test_inspect_from_the_cli(pipeline, capsys):
    rc = cli.main(
        ["inspect-teacher", "--teacher", str(pipeline), "--image-size", "64", "96", "repeats=1"]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "(pipeline, UNet2DModel" in text
    assert "schedule: DDIMScheduler, 1000 steps, scaled_linear, predicts v_prediction" in text
    assert "one encoding of 1 x 64x96 on cpu (fp32)" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("  ") and "MiB" in line]
    assert [r[0] for r in rows] == ["4", "8", "16", "32"]
    assert [r[2] for r in rows] == ["16x24", "8x12", "4x6", "2x3"]


def test_inspect_needs_a_teacher(capsys):
    assert cli.main(["inspect-teacher"]) == 2
    err = capsys.readouterr().err
    assert "--teacher is required" in err and len(err.strip().splitlines()) == 1


def test_inspect_a_hooked_unet_folder(tmp_path):
    """A UNet of Skip blocks (read through forward hooks): each level's pass stops at its own
    tap, and measuring a level leaves no hook of its own behind on the shared UNet."""
    from dreamteacher.engine.inspect import measure_level
    from dreamteacher.teachers import load_teacher
    from tests.teachers.test_contract import _skip_unet

    _skip_unet().save_pretrained(tmp_path / "skip")
    info = dt.inspect_teacher(teacher=str(tmp_path / "skip"), device="cpu", repeats=1)
    assert [lv["stride"] for lv in info["levels"]] == [4, 8, 16, 32]
    assert all(lv["peak_bytes"] > 0 for lv in info["levels"])
    teacher = load_teacher(tmp_path / "skip")
    count = lambda: sum(len(m._forward_hooks) for m in teacher.unet.modules())
    before = count()
    assert before == len(set(teacher.taps))  # the teacher's own taps
    for s in teacher.strides:
        measure_level(teacher, s, torch.rand(1, 3, 32, 32), 1, "fp32")
    assert count() == before


def test_inspect_a_stable_diffusion_folder(tmp_path, capsys):
    """Levels at image strides (latents are 1/8); the VAE's encoding is part of each cost."""
    from tests.teachers.test_formats import save_tiny_sd

    folder = save_tiny_sd(tmp_path / "sd")
    info = dt.inspect_teacher(teacher=str(folder), device="cpu", repeats=1, strides=[8, 16, 32])
    assert info["kind"] == "sd" and info["model"] == "UNet2DConditionModel"
    assert info["image_size"] == [64, 64]
    assert [lv["map"] for lv in info["levels"]] == [[8, 8], [4, 4], [2, 2]]
    assert [lv["layer"] for lv in info["levels"]] == [
        f"up_blocks[{i}].attentions[-1]" for i in (3, 2, 1)
    ]
    # the VAE's weights count among the teacher's
    assert info["parameters"] > sum(p.numel() for p in load_unet(folder).parameters())


def load_unet(folder):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder / "unet")


def test_inspect_an_adm_folder(tmp_path):
    """An ADM checkpoint: its layers by output block, the schedule its flags name."""
    from tests.teachers.test_adm import (
        COMMON_FLAGS,
        DESIGNS,
        diffusers_unet,
        save_adm,
        to_adm_checkpoint,
    )

    flags = f"{COMMON_FLAGS} {DESIGNS['resblock_updown']['flags']} --noise_schedule cosine"
    state = to_adm_checkpoint(diffusers_unet("resblock_updown"), legacy_head_dim=32)
    folder = save_adm(tmp_path / "adm", state, flags)
    info = dt.inspect_teacher(teacher=str(folder), device="cpu", repeats=1, strides=[1, 2, 4])
    assert (info["kind"], info["model"]) == ("adm", "ADMUNet")
    assert info["image_size"] == info["trained_size"] == [32, 32]
    assert info["parameters"] == sum(v.numel() for v in state.values())
    assert info["scheduler"]["beta_schedule"] == "squaredcos_cap_v2"
    assert info["scheduler"]["prediction_type"] == "epsilon"
    # two levels of 1 res block: output blocks 0-1 at stride 2, 2-3 at stride 1
    assert [lv["layer"] for lv in info["levels"]] == [
        "output_blocks[3] before its upsampler",
        "output_blocks[1] before its upsampler",
        "avg_pool(output_blocks[1] before its upsampler)",
    ]
    assert [lv["map"] for lv in info["levels"]] == [[32, 32], [16, 16], [8, 8]]
