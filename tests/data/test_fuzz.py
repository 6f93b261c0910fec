"""Property-based fuzzing of the image and mask loaders: random bytes and mutated real files
either load, are skipped with a warning, or raise a one-line UserError. Nothing else."""

import io
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dreamteacher.data import ImageFolder, MaskFolder
from dreamteacher.data.synthetic import make_scenes
from dreamteacher.errors import UserError

FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
EXTS = [".png", ".jpg", ".webp", ".bmp", ".tif"]


def _encoded(fmt: str, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(0)
    shape = (12, 10, 3) if mode == "RGB" else (12, 10)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buf, format=fmt)
    return buf.getvalue()


VALID = {
    ext: _encoded(
        {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "bmp": "BMP", "tif": "TIFF"}[ext[1:]]
    )
    for ext in EXTS
}


@st.composite
def malformed(draw):
    """Random bytes, or a valid file truncated and/or with bytes overwritten."""
    ext = draw(st.sampled_from(EXTS))
    if draw(st.booleans()):
        return ext, draw(st.binary(max_size=512))
    data = bytearray(VALID[ext])
    data = data[: draw(st.integers(0, len(data)))]
    for _ in range(draw(st.integers(0, 8))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return ext, bytes(data)


def _check_one_line(e: UserError) -> None:
    assert "\n" not in str(e) and str(e)


@FUZZ
@given(case=malformed())
def test_image_folder_never_crashes(tmp_path_factory, case):
    ext, data = case
    d = tmp_path_factory.mktemp("imgs")
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(d / "good.png")
    (d / f"fuzz{ext}").write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ImageFolder(d, [8, 8])  # good.png is always readable: never an error here
        for i in range(len(ds)):
            x = ds[i]
            assert x.shape == (3, 8, 8) and bool(((x >= 0) & (x <= 1)).all())
    try:
        ImageFolder(d, [8, 8], strict=True)[len(ds) - 1]
    except UserError as e:
        _check_one_line(e)
        assert "fuzz" in str(e)


@FUZZ
@given(case=malformed(), mask_bytes=st.one_of(st.none(), st.binary(max_size=256)))
def test_mask_folder_never_crashes(tmp_path_factory, case, mask_bytes):
    ext, data = case
    d = make_scenes(
        tmp_path_factory.mktemp("seg"),
        n=3,
        image_size=(8, 8),
        seed=0,
        splits={"train": 0.67, "test": 0.33},
    )
    (d / "images" / "scene_00000.png").unlink()
    (d / "images" / f"scene_00000{ext}").write_bytes(data)  # a fuzzed image with a mask
    if mask_bytes is not None:
        (d / "masks" / "scene_00001.png").write_bytes(mask_bytes)  # a fuzzed mask
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            f = MaskFolder(d)
            ds = f.dataset(f.splits["train"] + f.splits["test"], [8, 8])
            for i in range(len(ds)):
                x, y = ds[i]
                assert x.shape == (3, 8, 8) and y.shape == (8, 8)
        except UserError as e:
            _check_one_line(e)
