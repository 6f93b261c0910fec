"""The pretraining images of a command's `--data`: an image folder, the images of a mask
folder (all of them, or only those of some splits, so that test images stay unseen), or the
images of a standard dataset (`KIND:PATH`: every split but test unless splits are named)."""

from __future__ import annotations

from pathlib import Path

from dreamteacher.data.folder import ImageFolder
from dreamteacher.data.layouts import open_layout
from dreamteacher.data.segmentation import MaskFolder, with_val
from dreamteacher.errors import UserError


def unlabeled_images(
    data: str | Path, image_size: list[int], splits: list[str] | None = None, strict: bool = False
):
    """The pretraining images: every image under `data`, or, when `splits` is given and `data`
    is a mask folder, only the images listed in those splits (test images stay unseen). A
    standard dataset's test images are never used."""
    layout = open_layout(data)
    if layout is not None:
        listed, _ = with_val(layout.splits)
        wanted = splits or [s for s in listed if s != "test"]
        unknown = [s for s in wanted if s not in listed]
        if unknown:
            raise UserError(f"split '{unknown[0]}' not in {data}; have {list(listed)}")
        if "test" in wanted:
            raise UserError(
                f"splits=[test] with --data {data}: the test split's images stay unseen by "
                "pretraining; name train and/or val"
            )
        ids = sorted({i for s in wanted for i in listed[s]})
        return ImageFolder(
            layout.root, image_size, files=[layout.images[i] for i in ids], strict=strict
        )
    root = Path(data)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        root = root / "images"  # a mask folder: its masks are not training images
    if not splits:
        return ImageFolder(root, image_size, strict=strict)
    folder = MaskFolder(data, strict=strict)
    unknown = [s for s in splits if s not in folder.splits]
    if unknown:
        raise UserError(f"split '{unknown[0]}' not in {folder.root}; have {list(folder.splits)}")
    ids = sorted({i for s in splits for i in folder.splits[s]})
    return ImageFolder(folder.root / "images", image_size, ids, strict=strict)
