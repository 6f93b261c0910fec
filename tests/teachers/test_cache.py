import json

import numpy as np
import pytest
import torch

import dreamteacher as dt
from dreamteacher.data import unlabeled_images
from dreamteacher.engine.randomness import mix
from dreamteacher.errors import UserError
from dreamteacher.teachers import load_teacher
from dreamteacher.teachers.cache import FeatureCache


@pytest.fixture(scope="module")
def cache_dir(scenes, teacher_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    return dt.api.cache_features(
        data=str(scenes),
        teacher=str(teacher_run),
        out=str(out),
        splits=["train"],
        draws=2,
        batch_size=5,
        device="cpu",
    )


def test_cache_holds_the_teacher_features(cache_dir, scenes, teacher_run):
    meta = json.loads((cache_dir / "meta.json").read_text())
    teacher = load_teacher(teacher_run)
    assert meta["images"] == 16 and meta["draws"] == 2
    assert [s[0] for s in meta["levels"]] == teacher.channels
    arrays = [np.load(cache_dir / f"level{i}.npy", mmap_mode="r") for i in range(4)]
    assert arrays[0].shape == (16, 2, teacher.channels[0], 8, 8) and arrays[0].dtype == np.float16
    assert meta["bytes_per_image"] == sum(a[0].size for a in arrays) * 2
    data = unlabeled_images(scenes, [32, 32], ["train"])
    x = data[3].unsqueeze(0)
    for j, xj in ((0, x), (1, x.flip(-1))):  # odd draws are of the flipped image
        ref = teacher(xj, [mix(0, 99991, 3, j)])
        for lvl in range(4):
            got = torch.from_numpy(arrays[lvl][3, j].astype(np.float32))
            assert torch.allclose(got, ref[lvl][0], atol=2e-2 * ref[lvl].abs().max().item())


def test_lookup_flips_match_draws(cache_dir, scenes):
    cache = FeatureCache(cache_dir)
    feats, flips = cache.lookup(torch.tensor([0, 5, 5]), [11, 12, 13])
    assert [f.shape[0] for f in feats] == [3, 3, 3, 3]
    js = [mix(k, 5) % 2 for k in (11, 12, 13)]
    assert flips.tolist() == [j == 1 for j in js]
    for b, (i, j) in enumerate(zip([0, 5, 5], js, strict=True)):
        ref = np.load(cache_dir / "level1.npy", mmap_mode="r")[i, j]
        assert torch.equal(feats[1][b], torch.from_numpy(ref.astype(np.float32)))


def test_pretrain_from_cache(cache_dir, scenes, teacher_run, tmp_path):
    run = dt.pretrain(
        data=str(scenes),
        teacher=str(teacher_run),
        out=str(tmp_path / "p"),
        splits=["train"],
        backbone="resnet18",
        epochs=2,
        batch_size=4,
        warmup_epochs=0,
        feature_cache=str(cache_dir),
        device="cpu",
        log_every=1,
    )
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 8 and all(np.isfinite(r["loss"]) for r in log)
    with pytest.raises(UserError, match="built for another set of images"):
        dt.pretrain(
            data=str(scenes),
            teacher=str(teacher_run),
            out=str(tmp_path / "q"),
            backbone="resnet18",
            epochs=1,
            feature_cache=str(cache_dir),
            device="cpu",
        )
