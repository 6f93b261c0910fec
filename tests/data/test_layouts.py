"""`--data KIND:PATH`: tiny fake trees in each dataset's real layout, written here, read with
the right classes, ignore index, splits and mask values; `convert` round-trips them to a mask
folder that gives the same tensors; a wrong layout gets one line naming the missing part."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dreamteacher as dt
from dreamteacher.cli import main
from dreamteacher.data import MaskFolder, unlabeled_images
from dreamteacher.data.layouts import open_layout
from dreamteacher.errors import UserError

H, W = 20, 28


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)


def _mask(path: Path, values: list[int], seed: int, mode: str = "L") -> None:
    """A mask holding each of `values` (in stripes), the first stripe at column 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((H, W), np.uint8)
    for k, v in enumerate(values):
        arr[:, k * W // len(values) :] = v
    im = Image.fromarray(np.roll(arr, seed % 3, axis=0))
    if mode == "P":  # a palette PNG like VOC's SegmentationClass
        im = im.convert("P")
        im.putpalette([c for k in range(256) for c in (k, 255 - k, k // 2)])
    im.save(path)


def make_voc(root: Path) -> dict:
    base = root / "VOCdevkit" / "VOC2012"
    sets = {
        "train": [f"2007_{k:06d}" for k in range(6)],
        "val": [f"2008_{k:06d}" for k in range(3)],
    }
    for name, ids in sets.items():
        for k, i in enumerate(ids):
            _image(base / "JPEGImages" / f"{i}.jpg", k)
            _mask(base / "SegmentationClass" / f"{i}.png", [0, 15, 255, 7], k, mode="P")
        (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    # raw -> class at column 0, 7, 14, 21
    return {"n": 21, "first": "background", "train": 6, "test": 3, "cols": [0, 15, 255, 7]}


def make_cityscapes(root: Path) -> dict:
    for split, cities in (("train", ["aachen", "bochum"]), ("val", ["frankfurt"])):
        for city in cities:
            for k in range(3):
                stem = f"{city}_{k:06d}_000019"
                _image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", k)
                gt = root / "gtFine" / split / city
                _mask(gt / f"{stem}_gtFine_labelIds.png", [7, 26, 0, 33], k)
                _mask(gt / f"{stem}_gtFine_color.png", [1, 2, 3, 4], k)  # not read
    # label ids road 7 -> 0, car 26 -> 13, unlabeled 0 -> 255, bicycle 33 -> 18
    return {"n": 19, "first": "road", "train": 6, "test": 3, "cols": [0, 13, 255, 18]}


def make_ade20k(root: Path) -> dict:
    base = root / "ADEChallengeData2016"
    for split, tag, n in (("training", "train", 5), ("validation", "val", 2)):
        for k in range(n):
            i = f"ADE_{tag}_{k + 1:08d}"
            _image(base / "images" / split / f"{i}.jpg", k)
            _mask(base / "annotations" / split / f"{i}.png", [1, 0, 150, 3], k)
    rows = ["Idx\tRatio\tTrain\tVal\tName"] + [
        f"{k}\t0.01\t10\t1\t{'wall' if k == 1 else f'thing{k};other'}" for k in range(1, 151)
    ]
    (base / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
    return {"n": 150, "first": "wall", "train": 5, "test": 2, "cols": [0, 255, 149, 2]}


def make_pet(root: Path) -> dict:
    base = root / "oxford-iiit-pet"
    sets = {"trainval": ["Abyssinian_1", "Abyssinian_2", "beagle_1", "beagle_2"], "test": ["pug_1"]}
    for name, ids in sets.items():
        for k, i in enumerate(ids):
            _image(base / "images" / f"{i}.jpg", k)
            _mask(base / "annotations" / "trimaps" / f"{i}.png", [1, 2, 3, 1], k)
        lines = [f"{i} {1 + k} {1 + k % 2} {1 + k}" for k, i in enumerate(ids)]
        (base / "annotations" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return {"n": 2, "first": "background", "train": 4, "test": 1, "cols": [1, 0, 255, 1]}


def make_camvid(root: Path) -> dict:
    base = root / "CamVid"
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for k in range(n):
            i = f"0001TP_{split}_{k:04d}"
            _image(base / split / f"{i}.png", k)
            _mask(base / f"{split}annot" / f"{i}.png", [3, 11, 0, 10], k)
    return {"n": 11, "first": "sky", "train": 4, "val": 2, "test": 2, "cols": [3, 255, 0, 10]}


KINDS = {
    "voc": make_voc,
    "cityscapes": make_cityscapes,
    "ade20k": make_ade20k,
    "pet": make_pet,
    "camvid": make_camvid,
}


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, tuple[str, dict]]:
    out = {}
    for kind, make in KINDS.items():
        root = tmp_path_factory.mktemp(kind)
        out[kind] = (f"{kind}:{root}", make(root))
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_layout_reads_classes_splits_and_mask_values(trees, kind):
    data, want = trees[kind]
    f = MaskFolder(data)
    assert f.num_classes == want["n"] and f.class_names[0] == want["first"]
    assert f.ignore_index == 255
    # the official evaluation split is test; val is the dataset's own, or carved from train
    assert len(f.splits["test"]) == want["test"]
    if "val" in want:
        assert len(f.splits["val"]) == want["val"] and not f.carved_val
        assert len(f.splits["train"]) == want["train"]
    else:
        assert f.carved_val and f.splits["val"] == f.carved_val
        assert len(f.splits["train"]) + len(f.carved_val) == want["train"]
    assert not set(f.splits["train"]) & set(f.splits["test"])
    # stored values arrive as class ids: one stripe per value, columns 0, 7, 14, 21
    ds = f.dataset(f.splits["test"], [H, W], full_res_masks=True)
    image, mask = ds[0]
    assert image.shape == (3, H, W) and mask.dtype == torch.int64
    assert mask[:, [0, 7, 14, 21]].unique(dim=0).tolist() == [want["cols"]]


@pytest.mark.parametrize("kind", list(KINDS))
def test_convert_round_trips_to_the_same_tensors(trees, kind, tmp_path):
    data, _ = trees[kind]
    out = dt.convert(data, str(tmp_path / "seg"))
    a, b = MaskFolder(data), MaskFolder(out)
    assert a.splits == b.splits and a.class_names == b.class_names
    assert b.ignore_index == a.ignore_index == 255
    ids = sorted(a.images)
    da, db = a.dataset(ids, [16, 24]), b.dataset(ids, [16, 24])
    for k in range(len(ids)):
        (ia, ma), (ib, mb) = da[k], db[k]
        assert torch.equal(ia, ib) and torch.equal(ma, mb)
    assert json.loads((out / "classes.json").read_text())["names"] == a.class_names


def test_convert_resizes_and_keeps_class_ids(trees, tmp_path):
    data, want = trees["cityscapes"]
    out = dt.convert(data, str(tmp_path / "small"), size=[10, 14])
    b = MaskFolder(out)
    i = b.splits["test"][0]
    assert Image.open(b.images[i]).size == (14, 10)
    mask = np.asarray(Image.open(b.masks[i]))
    assert mask.shape == (10, 14) and set(np.unique(mask)) == set(want["cols"])


def test_convert_refuses_a_non_empty_out_and_leaves_it_alone(trees, tmp_path):
    data, _ = trees["pet"]
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not an empty folder"):
        dt.convert(data, str(out))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert not list(tmp_path.glob(".taken.partial-*"))


def test_convert_from_the_command_line(trees, tmp_path, capsys):
    data, _ = trees["camvid"]
    assert main(["convert", data, "--out", str(tmp_path / "cv"), "--size", "12", "16"]) == 0
    assert "8 image/mask pairs, 11 classes" in capsys.readouterr().out
    f = MaskFolder(tmp_path / "cv")
    assert {k: len(v) for k, v in f.splits.items()} == {"train": 4, "val": 2, "test": 2}
    assert main(["convert", data, "--out", str(tmp_path / "cv")]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_unlabeled_images_of_a_layout_never_include_test(trees):
    data, _ = trees["cityscapes"]
    f = MaskFolder(data)
    images = unlabeled_images(data, [16, 16])
    names = {p.name.split("_leftImg8bit")[0] for p in images.files}
    assert names == set(f.splits["train"]) | set(f.splits["val"])
    assert not names & set(f.splits["test"])
    only_train = unlabeled_images(data, [16, 16], splits=["train"])
    assert len(only_train) == len(f.splits["train"])
    with pytest.raises(UserError, match="test split's images stay unseen"):
        unlabeled_images(data, [16, 16], splits=["test"])


@pytest.mark.parametrize(
    "kind,remove,missing",
    [
        ("cityscapes", "gtFine", "gtFine"),
        ("cityscapes", "leftImg8bit/val", "leftImg8bit/val"),
        ("voc", "VOCdevkit", "VOCdevkit/"),
        (
            "voc",
            "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt",
            "ImageSets/Segmentation/val.txt",
        ),
        ("ade20k", "ADEChallengeData2016/annotations", "annotations/"),
        ("pet", "oxford-iiit-pet/annotations/trimaps", "annotations/trimaps"),
        ("camvid", "CamVid/testannot", "testannot"),
    ],
)
def test_a_wrong_layout_names_the_missing_part(tmp_path, kind, remove, missing):
    import shutil

    KINDS[kind](tmp_path)
    target = tmp_path / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(UserError, match=f"no {missing}.* under ") as e:
        MaskFolder(f"{kind}:{tmp_path}")
    assert "\n" not in str(e.value)


def test_dataset_folder_named_itself_or_around_it(tmp_path):
    make_voc(tmp_path)
    for path in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        assert open_layout(f"voc:{path}").root == tmp_path / "VOCdevkit" / "VOC2012"
    make_pet(tmp_path / "p")
    assert open_layout(f"pet:{tmp_path / 'p' / 'oxford-iiit-pet'}").root.name == "oxford-iiit-pet"


def test_values_a_kind_does_not_store_are_refused(tmp_path):
    make_cityscapes(tmp_path)
    bad = next((tmp_path / "gtFine" / "val").rglob("*_labelIds.png"))
    _mask(bad, [7, 40], 0)  # 40 is no Cityscapes label id
    with pytest.raises(UserError, match="values that cityscapes masks do not hold.*has 40"):
        MaskFolder(f"cityscapes:{tmp_path}")


def test_unknown_kind_and_plain_folders(tmp_path):
    with pytest.raises(UserError, match="unknown dataset kind 'kitti'"):
        MaskFolder(f"kitti:{tmp_path}")
    with pytest.raises(UserError, match="is not a folder"):
        MaskFolder(f"voc:{tmp_path / 'nowhere'}")
    with pytest.raises(UserError, match="KIND:PATH"):
        MaskFolder(tmp_path)  # neither a mask folder nor a kind


def test_finetune_runs_on_a_layout(trees, tmp_path):
    data, want = trees["pet"]
    m = dt.finetune(
        data=data,
        out=str(tmp_path / "ft"),
        backbone="resnet18",
        weights="scratch",
        steps=1,
        batch_size=2,
        image_size=[32],
        head_channels=16,
        warmup_steps=0,
        device="cpu",
    )
    assert m["split"] == "test" and m["eval_images"] == want["test"]
    assert set(m["per_class_iou"]) == {"background", "pet"}


CAMVID = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "camvid"


@pytest.mark.slow
@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"no CamVid copy at {CAMVID}")
def test_real_camvid_in_segnet_layout_reads_like_its_mask_folder(tmp_path):
    """The shared CamVid (a mask folder) rebuilt in SegNet's layout (images linked, void
    stored as 11) gives the same splits, classes and tensors through `camvid:`."""
    splits = json.loads((CAMVID / "splits.json").read_text())
    for split, ids in splits.items():
        (tmp_path / split).mkdir()
        (tmp_path / f"{split}annot").mkdir()
        for i in ids:
            (tmp_path / split / f"{i}.jpg").symlink_to(CAMVID / "images" / f"{i}.jpg")
            m = np.asarray(Image.open(CAMVID / "masks" / f"{i}.png")).copy()
            m[m == 255] = 11
            Image.fromarray(m).save(tmp_path / f"{split}annot" / f"{i}.png")
    a, b = MaskFolder(CAMVID), MaskFolder(f"camvid:{tmp_path}")
    assert a.splits == b.splits and a.class_names == b.class_names and not b.carved_val
    for split in ("train", "val", "test"):
        da, db = a.dataset(a.splits[split], [64, 80]), b.dataset(b.splits[split], [64, 80])
        for k in range(len(da)):
            (x, y), (u, v) = da[k], db[k]
            assert torch.equal(x, u) and torch.equal(y, v)
