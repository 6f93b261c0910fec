import json

import numpy as np
import pytest
import torch
from PIL import Image

from dreamteacher.data import (
    ImageFolder,
    MaskFolder,
    ResumableBatchSampler,
    StepTagged,
    select_labeled,
)
from dreamteacher.data.synthetic import CLASSES, make_scenes
from dreamteacher.errors import UserError


def test_image_folder_recursive_and_converts_modes(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(np.full((10, 12), 200, np.uint8)).save(tmp_path / "a" / "gray.png")
    Image.fromarray(np.zeros((10, 12, 4), np.uint8)).save(tmp_path / "a" / "b" / "rgba.webp")
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "c.bmp")
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "d.tif")
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "e.JPG", format="JPEG")
    (tmp_path / "readme.txt").write_text("x")
    ds = ImageFolder(tmp_path, [16, 24])
    assert len(ds) == 5
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (3, 16, 24) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    gray = ds[[p.name for p in ds.files].index("gray.png")]
    assert torch.allclose(gray[:, 5, 5], torch.full((3,), 200 / 255), atol=1e-2)


def test_synthetic_scenes_are_deterministic(tmp_path):
    a = make_scenes(tmp_path / "a", n=6, image_size=(32, 32), seed=4)
    b = make_scenes(tmp_path / "b", n=6, image_size=(32, 32), seed=4)
    c = make_scenes(tmp_path / "c", n=6, image_size=(32, 32), seed=5)
    img = lambda d: np.asarray(Image.open(d / "images" / "scene_00002.png"))  # noqa: E731
    assert np.array_equal(img(a), img(b)) and not np.array_equal(img(a), img(c))
    masks = np.stack([np.asarray(Image.open(p)) for p in sorted((a / "masks").glob("*.png"))])
    assert masks.max() < len(CLASSES) and len(np.unique(masks)) >= 3
    splits = json.loads((a / "splits.json").read_text())
    assert not set(splits["train"]) & set(splits["test"])


def test_mask_folder_defaults_without_json(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(5):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / f"{i}.jpg")
        m = np.full((8, 8), 255, np.uint8)
        m[:4] = i % 3
        Image.fromarray(m).save(tmp_path / "masks" / f"{i}.png")
    f = MaskFolder(tmp_path)
    assert f.num_classes == 3 and f.ignore_index == 255  # ids 0..2 inferred, 255 ignored
    # a test part (20%), then a val part carved from train (10%, at least one), each picked
    # by the SHA-1 of the id: the ids in hash order are 4, 1, 3, 0, 2
    assert f.splits == {"train": ["0", "2", "3"], "test": ["4"], "val": ["1"]}
    assert f.carved_val == ["1"] and f.eval_split() == "test"


def test_a_val_split_is_carved_from_train_when_missing(tmp_path):
    """train + test only: 10% of train becomes val, the same ids whatever the file order, and
    train keeps the rest; a folder that has val keeps its own."""
    d = make_scenes(tmp_path / "a", n=40, image_size=(16, 16), splits={"train": 0.75, "test": 0.25})
    listed = json.loads((d / "splits.json").read_text())
    f = MaskFolder(d)
    assert len(f.carved_val) == 3 and f.splits["val"] == f.carved_val  # round(30 * 0.1)
    assert set(f.splits["train"]) | set(f.carved_val) == set(listed["train"])
    assert not set(f.splits["train"]) & set(f.carved_val)
    assert f.splits["test"] == listed["test"]
    listed["train"] = listed["train"][::-1]  # another order in splits.json: the same val
    (d / "splits.json").write_text(json.dumps(listed))
    assert MaskFolder(d).carved_val == f.carved_val
    g = make_scenes(
        tmp_path / "b", n=20, image_size=(16, 16), splits={"train": 0.5, "val": 0.2, "test": 0.3}
    )
    own = MaskFolder(g)
    assert (
        own.carved_val == []
        and own.splits["val"] == json.loads((g / "splits.json").read_text())["val"]
    )


def test_image_without_mask(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "lonely.png")
    with (
        pytest.warns(UserWarning, match="lonely.png has no mask"),
        pytest.raises(UserError, match="no readable image/mask pairs"),
    ):
        MaskFolder(tmp_path)


def test_unknown_class_id(tmp_path):
    d = make_scenes(tmp_path, n=3, image_size=(16, 16), seed=0)
    Image.fromarray(np.full((16, 16), 9, np.uint8)).save(d / "masks" / "scene_00001.png")
    with pytest.raises(UserError, match="unknown to classes.json .*scene_00001.png has 9"):
        MaskFolder(d)  # checked up front, whichever images a command will use


def test_every_bad_mask_is_reported_at_once(tmp_path):
    """Two wrong-size masks and an RGB mask: one line names all three, whichever ids are used;
    once they are fixed, two masks with unknown class ids are named together."""
    d = make_scenes(tmp_path, n=8, image_size=(16, 16), seed=0)
    for i in (2, 5):
        Image.fromarray(np.zeros((8, 16), np.uint8)).save(d / "masks" / f"scene_0000{i}.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(d / "masks" / "scene_00007.png")
    with pytest.raises(UserError) as e:
        MaskFolder(d)
    msg = str(e.value)
    assert msg.startswith("3 bad mask(s)") and "\n" not in msg
    assert "scene_00002.png is 16x8" in msg and "scene_00005.png is 16x8" in msg
    assert "scene_00007.png has mode RGB" in msg
    for i in (2, 5, 7):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(d / "masks" / f"scene_0000{i}.png")
    for i in (1, 6):
        Image.fromarray(np.full((16, 16), 7 + i, np.uint8)).save(d / "masks" / f"scene_0000{i}.png")
    with pytest.raises(
        UserError, match=r"2 mask\(s\) .*scene_00001.png has 8; scene_00006.png has 13"
    ):
        MaskFolder(d)


def test_strict_reports_every_unreadable_file_at_once(tmp_path):
    d = make_scenes(tmp_path, n=6, image_size=(16, 16), seed=0)
    (d / "images" / "scene_00001.png").write_bytes(b"not a png")
    (d / "images" / "scene_00004.png").write_bytes(b"")
    with pytest.raises(UserError, match=r"^2 input\(s\) to fix .*scene_00001.*scene_00004"):
        MaskFolder(d, strict=True)
    with pytest.raises(UserError, match=r"^2 unreadable input\(s\) .*scene_00001.*scene_00004"):
        ImageFolder(d / "images", [16, 16], strict=True)
    with pytest.warns(UserWarning, match=r"skipped 2 input\(s\)") as w:
        f = MaskFolder(d)
    assert len(w) == 1 and "scene_00001" not in f.images


def test_select_labeled_deterministic_subset():
    ids = [f"x{i}" for i in range(50)]
    a, b = select_labeled(ids, 10, seed=1), select_labeled(ids, 10, seed=1)
    c = select_labeled(ids, 10, seed=2)
    assert a == b and a != c and len(set(a)) == 10 and set(a) <= set(ids)
    assert select_labeled(ids, None, 0) == sorted(ids)


def test_sampler_resume_continues_the_same_order():
    full = list(ResumableBatchSampler(10, 3, seed=7, total_steps=9))
    tail = list(ResumableBatchSampler(10, 3, seed=7, start_step=4, total_steps=9))
    assert tail == full[4:]
    epoch0 = [i for b in full[:3] for i in b]  # 3 steps/epoch, drop_last
    assert len(set(epoch0)) == 9
    assert full[:3] != full[3:6]  # a new permutation each epoch
    ranks = [
        list(ResumableBatchSampler(10, 2, seed=7, total_steps=2, rank=r, world_size=2))
        for r in (0, 1)
    ]
    assert sorted(ranks[0][0] + ranks[1][0]) == sorted(
        list(ResumableBatchSampler(10, 4, seed=7, total_steps=1))[0]
    )


def test_step_tags_follow_a_resumed_sampler():
    """Each index is tagged with the global step of its batch, also when resuming at step 4."""
    sampler = ResumableBatchSampler(
        10, 3, seed=7, start_step=4, total_steps=9, rank=1, world_size=2
    )
    tagged = list(StepTagged(sampler))
    assert len(tagged) == len(sampler) == 5
    for k, batch in enumerate(tagged):
        assert batch == [(4 + k, i) for i in sampler.batch(4 + k)]
