"""The StyleGAN2 generator against hand-written references, network pickles read without
running their code, and GAN teachers trained on a folder (losses, checkpoints, resume) and
distilled."""

from __future__ import annotations

import io
import math
import pickle
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dreamteacher as dt
from dreamteacher.errors import UserError
from dreamteacher.teachers import load_teacher
from dreamteacher.teachers.stylegan import (
    Generator,
    SynthesisLayer,
    ToRGB,
    fir,
    fir_filter,
    upsample2x,
)
from dreamteacher.teachers.stylegan_pkl import load_stylegan_pickle
from tests.conftest import read_log, tiny_pretrain

SMALL = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=512, channel_max=32)


def test_upsampling_keeps_a_constant_and_spreads_an_impulse_as_the_filter():
    x = torch.ones(1, 1, 6, 6)
    assert torch.allclose(upsample2x(x, fir_filter())[..., 2:-2, 2:-2], torch.ones(8, 8))
    impulse = torch.zeros(1, 1, 4, 4)
    impulse[0, 0, 1, 1] = 1.0
    up = upsample2x(impulse, fir_filter())[0, 0]  # 8 x 8
    k = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8 * 2  # [1,3,3,1]/8, times 2 per axis (gain 4)
    want = torch.zeros(8, 8)
    want[1:5, 1:5] = torch.outer(k, k)  # around the zero-inserted pixel (2, 2), padded (2, 1)
    assert torch.allclose(up, want, atol=1e-6)


def _modulated_reference(layer: SynthesisLayer, x: torch.Tensor, w: torch.Tensor, noise=0.0):
    """The layer written the other way round: a weight modulated and demodulated per sample,
    then a grouped convolution, + noise x strength, bias as stored, lrelu x sqrt 2."""
    s = layer.affine(w)  # B, I
    wt = layer.weight[None] * s[:, None, :, None, None]  # B, O, I, 3, 3
    wt = wt / wt.square().sum([2, 3, 4], keepdim=True).add(1e-8).sqrt()
    b, i, h, ww = x.shape
    o = wt.shape[1]
    if layer.up:
        y = F.conv_transpose2d(
            x.reshape(1, b * i, h, ww), wt.transpose(1, 2).reshape(b * i, o, 3, 3), stride=2,
            groups=b,
        )  # fmt: skip
        y = fir(y.reshape(b, o, *y.shape[-2:]), fir_filter() * 4, (1, 1, 1, 1))
    else:
        y = F.conv2d(x.reshape(1, b * i, h, ww), wt.reshape(b * o, i, 3, 3), padding=1, groups=b)
        y = y.reshape(b, o, h, ww)
    y = y + noise * layer.noise_strength
    return F.leaky_relu(y + layer.bias[None, :, None, None], 0.2) * math.sqrt(2)


@pytest.mark.parametrize("up", [False, True])
def test_synthesis_layer_matches_a_per_sample_modulated_weight(up):
    torch.manual_seed(0)
    layer = SynthesisLayer(6, 5, 8, (8, 10) if up else (4, 5), up=up)
    layer.bias.data.normal_()
    x, w = torch.randn(3, 6, 4, 5), torch.randn(3, 8)
    got = layer(x, w, None)
    assert got.shape == (3, 5, 8, 10) if up else (3, 5, 4, 5)
    assert torch.allclose(got, _modulated_reference(layer, x, w), atol=1e-5)
    # noise enters scaled by noise_strength, before the bias and the activation
    layer.noise_strength.data.fill_(0.5)
    noise = torch.randn(1, 1, *got.shape[-2:])
    with_noise = layer(x, w, noise)
    assert not torch.allclose(with_noise, got)
    assert torch.allclose(with_noise, _modulated_reference(layer, x, w, noise), atol=1e-5)


def test_to_rgb_is_a_modulated_1x1_conv_without_demodulation():
    torch.manual_seed(1)
    rgb = ToRGB(4, 3, 8)
    x, w = torch.randn(2, 4, 5, 5), torch.randn(2, 8)
    s = rgb.affine(w) / 2  # 1 / sqrt(4 inputs)
    want = torch.einsum("oi,bi,bihw->bohw", rgb.weight[:, :, 0, 0], s, x) + rgb.bias[:, None, None]
    assert torch.allclose(rgb(x, w), want, atol=1e-5)


def test_generator_names_and_truncation():
    g = Generator([32, 32], **SMALL)
    keys = set(g.state_dict())
    for k in (
        "mapping.fc0.weight", "mapping.fc1.bias", "mapping.w_avg", "synthesis.b4.const",
        "synthesis.b4.conv1.affine.weight", "synthesis.b4.conv1.noise_const",
        "synthesis.b4.conv1.noise_strength", "synthesis.b4.torgb.weight",
        "synthesis.b4.resample_filter", "synthesis.b8.conv0.resample_filter",
        "synthesis.b32.conv1.weight", "synthesis.b32.torgb.affine.bias",
    ):  # fmt: skip
        assert k in keys, k  # the names of StyleGAN2-ADA's generator
    assert g.synthesis.num_ws == 8 and "synthesis.b4.conv0.weight" not in keys
    z = torch.randn(2, 16)
    w = g.mapping(z)
    assert w.shape == (2, 8, 16) and torch.equal(w[:, 0], w[:, 7])
    g.mapping.w_avg.normal_()
    half = g.mapping(z, psi=0.5)
    assert torch.allclose(half, g.mapping.w_avg + 0.5 * (w - g.mapping.w_avg), atol=1e-6)
    img, feats = g(z)
    assert img.shape == (2, 3, 32, 32) and [f.shape[-1] for f in feats] == [4, 8, 16, 32]
    with pytest.raises(UserError, match="short side is 4 x a power of 2"):
        Generator([48, 48], **SMALL)


# --- network pickles --------------------------------------------------------------------


def _official_pickle(g: Generator, path: Path, marker: Path, **init_kwargs) -> None:
    """A pickle with the structure of a StyleGAN2-ADA snapshot: every module reduced to
    torch_utils.persistence._reconstruct_persistent_obj(meta) with its source text (here,
    code that would write `marker` if it ran) and its __dict__ as the state."""
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # what the real one would do: exec the source
        raise AssertionError("never called while pickling")

    class EasyDict(dict):
        pass

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    src = f"open({str(marker)!r}, 'w').write('ran')\n"

    class Pickler(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, torch.nn.Module):
                state = dict(obj.__dict__)
                if obj is g:
                    state["_init_args"], state["_init_kwargs"] = (), init_kwargs
                meta = {"type": "class", "version": 6, "module_src": src,
                        "class_name": type(obj).__name__, "state": state}  # fmt: skip
                return _reconstruct_persistent_obj, (meta,)
            return NotImplemented

    saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence",
                                             "dnnlib", "dnnlib.util")}  # fmt: skip
    sys.modules.update({"torch_utils": types.ModuleType("torch_utils"),
                        "torch_utils.persistence": persistence,
                        "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util})  # fmt: skip
    try:
        kw = EasyDict(init_kwargs.get("synthesis_kwargs", {}))
        init_kwargs["synthesis_kwargs"] = kw
        init_kwargs["mapping_kwargs"] = EasyDict(num_layers=SMALL["mapping_layers"])
        buf = io.BytesIO()
        data = {"training_set_kwargs": {"resolution": 32}, "G": g, "D": None, "G_ema": g,
                "augment_pipe": None}  # fmt: skip
        Pickler(buf, protocol=4).dump(data)
        path.write_bytes(buf.getvalue())
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _init_kwargs(res=32, c_dim=0):
    return {"z_dim": 16, "w_dim": 16, "c_dim": c_dim, "img_resolution": res, "img_channels": 3,
            "synthesis_kwargs": {"channel_base": 512, "channel_max": 32, "conv_clamp": None,
                                 "architecture": "skip"}}  # fmt: skip


def test_a_network_pickle_loads_without_running_its_code(tmp_path):
    torch.manual_seed(3)
    g = Generator([32, 32], **SMALL)
    g.mapping.w_avg.normal_()
    folder = tmp_path / "ffhq"
    folder.mkdir()
    marker = tmp_path / "ran.txt"
    _official_pickle(g, folder / "network-snapshot.pkl", marker, **_init_kwargs())
    teacher = load_teacher(folder, psi=0.7)
    assert not marker.exists()  # the stored source never ran
    gen = load_stylegan_pickle(folder / "network-snapshot.pkl")
    assert not gen.training and not any(p.requires_grad for p in gen.parameters())
    assert teacher.source.startswith("StyleGAN2 pickle")
    for k, v in g.state_dict().items():
        assert torch.equal(teacher.G.state_dict()[k], v), k
    z = torch.randn(2, 16)
    assert torch.allclose(teacher.G(z, 0.7)[0], g.eval()(z, 0.7)[0], atol=1e-6)
    assert teacher.strides == [4, 8, 16, 32] and teacher.image_size == [32, 32]


def test_pickles_that_could_run_code_or_do_not_fit_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()

    class Payload:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {marker}",))

    (evil / "net.pkl").write_bytes(pickle.dumps({"G_ema": Payload()}))
    with pytest.raises(UserError, match=r"asks to import (posix|os)\.system, which could run"):
        load_teacher(evil)
    assert not marker.exists()

    g = Generator([32, 32], **SMALL)
    cond = tmp_path / "cond"
    cond.mkdir()
    _official_pickle(g, cond / "a.pkl", marker, **_init_kwargs(c_dim=10))
    with pytest.raises(UserError, match="class-conditional"):
        load_teacher(cond)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    kw = _init_kwargs()
    kw["synthesis_kwargs"]["channel_max"] = 64  # the stored weights are 32 wide
    _official_pickle(g, wrong / "a.pkl", marker, **kw)
    with pytest.raises(UserError, match="has synthesis.b4.const of shape"):
        load_teacher(wrong)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="not a readable network pickle"):
        load_teacher(tmp_path / "junk")
    assert not marker.exists()


# --- training and distillation -----------------------------------------------------------

TINY_GAN = dict(kind="gan", splits=["train", "val"], image_size=[32], steps=4, batch_size=4,
                save_every=2, keep_checkpoints=5, warmup_steps=0, num_samples=4, log_every=1,
                r1_every=2, device="cpu")  # fmt: skip


@pytest.fixture(scope="module")
def gan_run(scenes, tmp_path_factory):
    return dt.train_teacher(data=str(scenes), out=str(tmp_path_factory.mktemp("gan") / "g"),
                            **TINY_GAN)  # fmt: skip


def test_a_tiny_gan_trains_and_its_run_loads_as_a_teacher(gan_run, scenes):
    log = read_log(gan_run)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for k in ("g", "d"):
        vals = [r[k] for r in log]
        assert all(math.isfinite(v) for v in vals) and len(set(vals)) == 4, (k, vals)
    # lazy R1: on steps 0 and 2 (logged as 1 and 3), weighted by r1_every = 2
    assert ["r1" in r for r in log] == [True, False, True, False]
    assert 0 < log[0]["r1"] != log[2]["r1"] and math.isfinite(log[2]["r1"])
    r = log[0]
    assert r["loss"] == pytest.approx(r["g"] + r["d"] + 0.1 / 2 * 2 * r["r1"], rel=1e-5)
    assert log[1]["loss"] == pytest.approx(log[1]["g"] + log[1]["d"], rel=1e-5)
    assert log[0]["lr"] == 2.5e-3  # the GAN's own default
    teacher = load_teacher(gan_run)
    ckpt = torch.load(sorted((gan_run / "checkpoints").glob("step_*.pt"))[-1], weights_only=False)
    for k, v in ckpt["ema"].items():  # the saved generator is the EMA one
        assert torch.equal(teacher.G.state_dict()[k], v), k
    assert sorted(p.name for p in (gan_run / "samples").iterdir()) == ["step_00000002.png"]
    images, _ = teacher.sample([0, 1, 2, 3])
    assert images.shape == (4, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    with pytest.raises(UserError, match="GAN teacher: it has no encoder"):
        dt.train_interpreter(data=str(scenes), teacher=str(gan_run), out=str(gan_run) + "_i")


def test_gan_training_resumes_exactly(scenes, gan_run, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(gan_run, cut)
    (cut / "checkpoints" / "step_00000004.pt").unlink()
    for f in ("generator.safetensors", "teacher.json", "samples.png", "report.html"):
        (cut / f).unlink()
    dt.train_teacher(data=str(scenes), out=str(cut), resume=True, **TINY_GAN)
    a = torch.load(gan_run / "checkpoints" / "step_00000004.pt", weights_only=False)
    b = torch.load(cut / "checkpoints" / "step_00000004.pt", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [r["loss"] for r in read_log(cut)] == pytest.approx(
        [r["loss"] for r in read_log(gan_run)]
    )


def test_pretrain_distils_a_gan_teacher_on_its_own_images(scenes, gan_run, tmp_path):
    kw = tiny_pretrain(scenes, gan_run, epochs=4)
    run = dt.pretrain(out=str(tmp_path / "p"), truncation_psi=0.8, **kw)
    log = read_log(run)
    assert len(log) == 16 and log[-1]["mse"] < log[0]["mse"]
    # the report's pictures are of the teacher's own first images
    z = np.load(run / "features.npz")
    teacher = load_teacher(gan_run)
    teacher.psi = 0.8
    images, _ = teacher.sample([0, 1, 2, 3])
    want = (images.permute(0, 2, 3, 1) * 255).round().byte().numpy()
    assert np.array_equal(z["images"], want)
    for mode, extra, match in (
        ("mix", {"interpreter": str(gan_run)}, "GAN teacher has no encoder"),
        ("feature", {"feature_cache": str(gan_run)}, "drop feature_cache"),
    ):
        with pytest.raises(UserError, match=match):
            dt.pretrain(out=str(tmp_path / mode), mode=mode, **(kw | extra))
