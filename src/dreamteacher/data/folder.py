"""A folder of unlabeled images, searched recursively, returned as float tensors in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from dreamteacher.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def list_images(root: str | Path, ids: list[str] | None = None) -> list[Path]:
    """Every image file under `root` (recursive, sorted). Raises a one-line UserError if none."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"data folder {root} does not exist; pass an existing folder to --data")
    if not root.is_dir():
        raise UserError(f"--data {root} is not a folder; pass the folder that holds the images")
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if ids is not None:
        wanted = set(ids)
        files = [p for p in files if p.stem in wanted]
    if not files:
        anything = any(root.rglob("*"))
        what = "has no image files" if anything else "is empty"
        raise UserError(
            f"data folder {root} {what}; put {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} "
            "images in it (subfolders are searched)"
        )
    return files


def load_rgb(path: str | Path) -> Image.Image:
    """Open any supported image as 8-bit RGB (EXIF orientation applied)."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                arr = 255.0 * (arr - arr.min()) / max(arr.max() - arr.min(), 1.0)
                im = Image.fromarray(arr.astype(np.uint8))
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(
            f"cannot read image {path} ({type(e).__name__}); delete or replace the file"
        ) from None


def to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor in [0, 1]. # 3, H, W"""
    arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def unlabeled_images(data: str | Path, image_size: list[int], splits: list[str] | None = None):
    """The pretraining images: every image under `data`, or, when `splits` is given and `data`
    is a mask folder, only the images listed in those splits (test images stay unseen)."""
    if not splits:
        return ImageFolder(data, image_size)
    from dreamteacher.data.segmentation import MaskFolder

    folder = MaskFolder(data)
    unknown = [s for s in splits if s not in folder.splits]
    if unknown:
        raise UserError(f"split '{unknown[0]}' not in {folder.root}; have {list(folder.splits)}")
    ids = sorted({i for s in splits for i in folder.splits[s]})
    return ImageFolder(folder.root / "images", image_size, ids)


class ImageFolder(torch.utils.data.Dataset):
    """Unlabeled images resized to (H, W); flips are done on the batch by the training loop."""

    def __init__(self, root: str | Path, image_size: list[int], ids: list[str] | None = None):
        self.root = Path(root)
        self.files = list_images(root, ids)
        self.size = (int(image_size[0]), int(image_size[1]))  # H, W

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        im = load_rgb(self.files[i])
        im = im.resize((self.size[1], self.size[0]), Image.BICUBIC)
        return to_tensor(im)  # 3, H, W
