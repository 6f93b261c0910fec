"""Messy folders (docs/data.md): each bad case is converted, skipped with a one-line warning
naming the file, or rejected with a one-line UserError; --strict turns skips into errors."""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamteacher.data import ImageFolder, MaskFolder
from dreamteacher.data.folder import load_rgb
from dreamteacher.data.synthetic import make_scenes
from dreamteacher.errors import UserError


def _rgb(path, h=16, w=16, value=128):
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def _truncated_jpeg(path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, format="JPEG"
    )
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


@pytest.fixture
def messy(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    _rgb(d / "good.png")
    (d / "zero.jpg").write_bytes(b"")
    (d / "garbage.png").write_bytes(b"this is not a png")
    (d / "notes.txt").write_text("ignored: not an image extension")
    return d


def test_unreadable_files_are_skipped_with_a_warning(messy):
    with pytest.warns(UserWarning) as rec:
        ds = ImageFolder(messy, [8, 8])
    assert [p.name for p in ds.files] == ["good.png"]
    msgs = [str(r.message) for r in rec]
    assert any("zero.jpg" in m for m in msgs) and any("garbage.png" in m for m in msgs)
    assert all("\n" not in m for m in msgs)


def test_strict_rejects_unreadable_files(messy):
    with pytest.raises(UserError, match=r"garbage\.png.*--strict"):
        ImageFolder(messy, [8, 8], strict=True)


def test_truncated_image_is_replaced_at_decode_time(tmp_path):
    _rgb(tmp_path / "a.png", value=10)
    _truncated_jpeg(tmp_path / "b.jpg")  # the header reads; the data does not
    _rgb(tmp_path / "c.png", value=250)
    ds = ImageFolder(tmp_path, [8, 8])
    assert len(ds) == 3
    with pytest.warns(UserWarning, match="b.jpg"):
        x = ds[1]
    assert torch.allclose(x, torch.full_like(x, 250 / 255), atol=1e-2)  # the next image
    strict = ImageFolder(tmp_path, [8, 8], strict=True)
    with pytest.raises(UserError, match="b.jpg"):
        strict[1]


def test_modes_are_converted_to_rgb(tmp_path):
    Image.fromarray(np.full((4, 4), 77, np.uint8)).save(tmp_path / "gray.png")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 0  # fully transparent red
    rgba[0, 0] = (0, 255, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # red in CMYK
    Image.fromarray(np.full((4, 4), 51400, np.uint16)).save(tmp_path / "deep.png")  # 16-bit
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    px = lambda name: np.asarray(load_rgb(tmp_path / name))  # noqa: E731
    assert px("gray.png").shape == (4, 4, 3) and (px("gray.png") == 77).all()
    assert tuple(px("rgba.png")[1, 1]) == (0, 0, 0) and tuple(px("rgba.png")[0, 0]) == (0, 255, 0)
    r, g, b = px("cmyk.jpg")[2, 2].astype(int)
    assert r > 200 and g < 60 and b < 60
    assert (px("deep.png") == 51400 >> 8).all()
    assert tuple(px("pal.png")[0, 0]) == (10, 20, 30)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.fromarray(np.zeros((10, 20, 3), np.uint8))  # 20 wide, 10 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(tmp_path / "rot.jpg").size == (10, 20)


def test_very_large_images(tmp_path, monkeypatch):
    """Over PIL's bomb limit (here lowered to 80k px): up to 2x loads, beyond is skipped."""
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(tmp_path / "big.jpg")  # 1.5x
    Image.fromarray(np.zeros((400, 600, 3), np.uint8)).save(tmp_path / "huge.png")  # 3x
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 80_000)
    with pytest.warns(UserWarning, match="huge.png.*decompression-bomb") as rec:
        ds = ImageFolder(tmp_path, [12, 16])
    assert len(rec) == 1 and [p.name for p in ds.files] == ["big.jpg"]
    assert ds[0].shape == (3, 12, 16)


def test_jpeg_draft_decodes_large_images_at_reduced_scale(tmp_path):
    Image.fromarray(np.full((1200, 1600, 3), 90, np.uint8)).save(tmp_path / "l.jpg")
    im = load_rgb(tmp_path / "l.jpg", size=(40, 30))
    assert im.size[0] < 1600 and im.size[0] >= 80  # decoded at 1/8 .. 1/2 scale
    assert abs(int(np.asarray(im)[5, 5, 0]) - 90) <= 3


def _mask_folder(tmp_path: Path, n=4) -> Path:
    return make_scenes(
        tmp_path / "seg", n=n, image_size=(16, 16), seed=0, splits={"train": 0.5, "test": 0.5}
    )


def test_image_without_mask_and_mask_without_image(tmp_path):
    d = _mask_folder(tmp_path)
    _rgb(d / "images" / "extra.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(d / "masks" / "orphan.png")
    with pytest.warns(UserWarning) as rec:
        f = MaskFolder(d)
    msgs = " ".join(str(r.message) for r in rec)
    assert "extra.png has no mask" in msgs and "orphan.png has no image" in msgs
    assert "extra" not in f.images and "orphan" not in f.masks
    with pytest.raises(UserError, match="extra.png has no mask.*--strict"):
        MaskFolder(d, strict=True)


def test_corrupt_mask_is_skipped_and_rgb_mask_rejected(tmp_path):
    d = _mask_folder(tmp_path)
    (d / "masks" / "scene_00001.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning, match="scene_00001"):
        f = MaskFolder(d)
    assert "scene_00001" not in f.images and "scene_00001" not in f.splits["train"]
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(d / "masks" / "scene_00002.png")
    with pytest.raises(UserError, match="scene_00002.png has mode RGB"):
        MaskFolder(d)


def test_mask_size_and_class_id_are_errors(tmp_path):
    d = _mask_folder(tmp_path)
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(d / "masks" / "scene_00000.png")
    with pytest.raises(UserError, match="scene_00000.png is 16x8 but its image"):
        MaskFolder(d)
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(d / "masks" / "scene_00000.png")
    with pytest.raises(UserError, match=r"unknown to classes.json \(5 classes.*has 7"):
        MaskFolder(d)


def test_empty_and_unreadable_folders(tmp_path, monkeypatch):
    (tmp_path / "e").mkdir()
    with pytest.raises(UserError, match="is empty"):
        ImageFolder(tmp_path / "e", [8, 8])
    with pytest.raises(UserError, match="does not exist"):
        ImageFolder(tmp_path / "nope", [8, 8])

    # an unreadable folder (simulated: the tests may run as root, who reads anything)
    real_scandir, locked = os.scandir, {tmp_path / "e", tmp_path / "d" / "locked"}

    def scandir(path):
        if Path(path) in locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(UserError, match=r"cannot read folder .*Permission denied.*permissions"):
        ImageFolder(tmp_path / "e", [8, 8])
    # an unreadable subfolder is reported, with the other skipped inputs, in one line
    for sub in ("ok", "locked"):
        (tmp_path / "d" / sub).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "d" / sub / "a.png")
    (tmp_path / "d" / "ok" / "bad.png").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable input\(s\)") as w:
        f = ImageFolder(tmp_path / "d", [8, 8])
    assert len(w) == 1 and "locked/ (Permission denied)" in str(w[0].message)
    assert "bad.png" in str(w[0].message) and [p.name for p in f.files] == ["a.png"]


def test_symlinked_folders_are_followed_once(tmp_path):
    real = tmp_path / "store" / "cams"
    real.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(real / f"{i}.png")
    data = tmp_path / "data"
    data.mkdir()
    (data / "linked").symlink_to(real)  # a linked subfolder
    (real / "loop").symlink_to(real)  # a link back to an ancestor: no endless walk
    (data / "dangling").symlink_to(tmp_path / "gone")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable input\(s\)") as w:
        f = ImageFolder(data, [8, 8])
    assert sorted(p.name for p in f.files) == ["0.png", "1.png", "2.png"]
    assert "loop/ (a link to a folder already searched)" in str(w[0].message)
    assert "dangling (a link to nothing)" in str(w[0].message)
    (tmp_path / "top").symlink_to(real)  # --data itself a link
    (real / "loop").unlink()
    assert len(ImageFolder(tmp_path / "top", [8, 8])) == 3


def test_bad_json_files(tmp_path):
    d = _mask_folder(tmp_path)
    (d / "splits.json").write_text("{not json")
    with pytest.raises(UserError, match="splits.json is not valid JSON"):
        MaskFolder(d)
    (d / "splits.json").write_text(json.dumps({"train": ["scene_00000", "ghost"]}))
    with pytest.raises(UserError, match="'ghost' which has no image"):
        MaskFolder(d)


def test_exif_rotated_images_in_mask_folders(tmp_path):
    """A mask may match the image as displayed (EXIF applied) or as stored; both work."""
    d = _mask_folder(tmp_path)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    for i, mask_size in (("scene_00000", (10, 20)), ("scene_00001", (20, 10))):
        (d / "images" / f"{i}.png").unlink()
        Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(d / "images" / f"{i}.jpg", exif=exif)
        Image.fromarray(np.zeros(mask_size[::-1], np.uint8)).save(d / "masks" / f"{i}.png")
    ds = MaskFolder(d).dataset(["scene_00000", "scene_00001"], [8, 8], full_res_masks=True)
    assert ds.exif == {"scene_00000": True, "scene_00001": False}
    assert ds[0][1].shape == (20, 10) and ds[1][1].shape == (10, 20)


def test_json_of_the_wrong_shape(tmp_path):
    d = _mask_folder(tmp_path)
    (d / "splits.json").write_text(json.dumps({"train": 5}))
    with pytest.raises(UserError, match="split 'train' must be a list"):
        MaskFolder(d)
    (d / "splits.json").unlink()
    (d / "classes.json").write_text(json.dumps({"names": ["a", "b"], "ignore_index": "x"}))
    with pytest.raises(UserError, match="ignore_index must be an integer"):
        MaskFolder(d)


def test_mask_folder_root_trains_on_its_images_only(tmp_path):
    from dreamteacher.data import unlabeled_images

    d = _mask_folder(tmp_path)
    ds = unlabeled_images(d, [16, 16])
    assert len(ds) == 4 and all(p.parent.name == "images" for p in ds.files)
