"""`convert`: write any labelled `--data` (a standard dataset's layout, or a mask folder) as a
portable mask folder: images/, masks/ (class ids, 255 = ignored), splits.json, classes.json."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from dreamteacher.data.folder import load_rgb
from dreamteacher.data.segmentation import MaskFolder
from dreamteacher.errors import UserError
from dreamteacher.runfiles import track


def convert(
    data: str | Path, out: str | Path, size: list[int] | None = None, strict: bool = False
) -> Path:
    """Write `data` to the new or empty folder `out`, resized to `size` (H, W) if given; the
    files appear only when all are written (nothing half-converted is left under `out`)."""
    folder = MaskFolder(data, strict=strict)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    try:
        ids = sorted({i for split in folder.splits.values() for i in split})
        for i in track(ids, desc="convert"):
            _write_pair(folder, i, tmp, size)
        (tmp / "splits.json").write_text(json.dumps(folder.splits, indent=1))
        classes = {"names": folder.class_names, "ignore_index": folder.ignore_index}
        (tmp / "classes.json").write_text(json.dumps(classes, indent=1))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"convert: {len(ids)} image/mask pairs, {folder.num_classes} classes -> {out}")
    return out


def _write_pair(folder: MaskFolder, i: str, out: Path, size: list[int] | None) -> None:
    src = folder.images[i]
    mask = folder.load_mask(i)  # H, W class ids
    if mask.max(initial=0) > 255:
        raise UserError(f"mask {folder.masks[i]} holds ids above 255; a mask folder stores uint8")
    m = Image.fromarray(mask.astype(np.uint8))
    if size is None:  # the image file as it is (its EXIF orientation is read again later)
        shutil.copyfile(src, out / "images" / f"{i}{src.suffix.lower()}")
    else:
        h, w = int(size[0]), int(size[1])
        im = load_rgb(src, exif=folder.exif[i]).resize((w, h), Image.BICUBIC)
        jpeg = src.suffix.lower() in (".jpg", ".jpeg")
        im.save(out / "images" / f"{i}{'.jpg' if jpeg else '.png'}", quality=95)
        m = m.resize((w, h), Image.NEAREST)
    m.save(out / "masks" / f"{i}.png")
