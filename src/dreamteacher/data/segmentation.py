"""The mask-folder format: images/<id>.<ext>, masks/<id>.png (uint8 ids, 255 = ignore),
optional splits.json {"train": [...], "val": [...], "test": [...]},
optional classes.json {"names": [...], "ignore_index": 255}.

A folder without splits.json gets a test part (TEST_FRACTION of its ids); a folder without a
val split gets one carved from train (VAL_FRACTION of train), so that settings can be chosen
on val and the test split read once. Both parts are picked by a hash of the id: the same ids
on every machine and in every command, independent of file order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreamteacher.data.folder import (
    IMAGE_EXTENSIONS,
    check_image,
    load_rgb,
    oriented_size,
    to_tensor,
    warn,
)
from dreamteacher.errors import UserError


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON (line {e.lineno}); fix its syntax") from None


TEST_FRACTION = 0.2  # of all ids, the test part of a folder without splits.json
VAL_FRACTION = 0.1  # of train, the val part of a folder without one


def carve(ids: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(rest, part): `fraction` of `ids` (at least one when there are two or more), chosen by
    the SHA-1 of each id, both lists sorted."""
    n = max(1, round(len(ids) * fraction)) if len(ids) > 1 else 0
    by_hash = sorted(ids, key=lambda i: hashlib.sha1(i.encode()).hexdigest())
    part = set(by_hash[:n])
    return sorted(i for i in ids if i not in part), sorted(part)


class MaskFormatError(UserError):
    """A mask in a format not guessed at (e.g. an RGB colour mask): always an error."""


def _load_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as m:
            if m.mode not in ("L", "P", "I", "I;16"):
                raise MaskFormatError(
                    f"mask {path} has mode {m.mode}; save masks as single-channel uint8 PNGs "
                    "holding class ids"
                )
            return np.asarray(m, dtype=np.int64)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read mask {path} ({type(e).__name__}); replace the file") from None


class MaskFolder:
    """Index of a mask-folder dataset: ids per split, class names, ignore index.

    Policy (docs/data.md): an image without a mask, a mask without an image, and an unreadable
    image or mask are skipped with a one-line warning (an error with strict=True); a mask of
    another size than its image, or holding a class id unknown to classes.json, is an error."""

    def __init__(self, root: str | Path, strict: bool = False):
        self.root = Path(root)
        self.strict = strict
        img_dir, mask_dir = self.root / "images", self.root / "masks"
        if not img_dir.is_dir() or not mask_dir.is_dir():
            raise UserError(
                f"{self.root} is not a mask folder: it needs images/ and masks/ subfolders"
            )
        images = {
            p.stem: p
            for p in sorted(img_dir.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        }
        masks = {p.stem: p for p in sorted(mask_dir.glob("*.png"))}
        if not images:
            raise UserError(f"{img_dir} has no images; put <id>.jpg/.png files in it")
        for i in sorted(set(images) - set(masks)):
            self._skip(
                f"image {images[i]} has no mask {mask_dir / (i + '.png')}",
                "add the mask or remove the image",
            )
        for i in sorted(set(masks) - set(images)):
            self._skip(
                f"mask {masks[i]} has no image in {img_dir}", "add the image or remove the mask"
            )
        self.images, self.masks, self.skipped = {}, {}, set()
        for i in sorted(set(images) & set(masks)):
            why = check_image(images[i], decode=True)  # labelled sets are small
            if why is None:
                try:
                    _load_mask(masks[i])
                except MaskFormatError:
                    raise
                except UserError as e:
                    self._skip(str(e).split(";")[0], "replace the file")
                    self.skipped.add(i)
                    continue
                self.images[i], self.masks[i] = images[i], masks[i]
            else:
                self._skip(f"image {images[i]} is unreadable ({why})", "replace the file")
                self.skipped.add(i)
        if not self.images:
            raise UserError(f"{self.root} has no readable image/mask pairs (see the warnings)")
        cls_file = self.root / "classes.json"
        if cls_file.exists():
            meta = _read_json(cls_file)
            if not isinstance(meta, dict) or not isinstance(meta.get("names"), list):
                raise UserError(f'{cls_file} needs {{"names": [...], "ignore_index": 255}}')
            self.class_names: list[str] = [str(n) for n in meta["names"]]
            ign = meta.get("ignore_index", 255)
            if not isinstance(ign, int) or isinstance(ign, bool):
                raise UserError(f"{cls_file}: ignore_index must be an integer, got {ign!r}")
            self.ignore_index = ign
        else:
            self.ignore_index = 255
            ids: set[int] = set()
            for m in self.masks.values():
                ids |= set(np.unique(_load_mask(m)).tolist())
            ids.discard(self.ignore_index)
            self.class_names = [f"class_{i}" for i in range(max(ids) + 1 if ids else 1)]
        split_file = self.root / "splits.json"
        if split_file.exists():
            raw = _read_json(split_file)
            if not isinstance(raw, dict):
                raise UserError(f'{split_file} needs {{"train": [...], "test": [...]}}')
            self.splits = {}
            for name, ids in raw.items():
                if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                    raise UserError(f"{split_file}: split '{name}' must be a list of id strings")
                unknown = [i for i in ids if i not in images]
                if unknown:
                    raise UserError(
                        f"{split_file}: split '{name}' lists '{unknown[0]}' which has no image in "
                        f"{img_dir}; fix the id or add the image"
                    )
                self.splits[name] = [i for i in ids if i in self.images]
        else:
            train, test = carve(sorted(self.images), TEST_FRACTION)
            self.splits = {"train": train, "test": test}
        # ids moved from train to a val split made here (empty when the folder has val)
        self.carved_val: list[str] = []
        if not self.splits.get("val") and len(self.splits.get("train", [])) > 1:
            self.splits["train"], self.carved_val = carve(self.splits["train"], VAL_FRACTION)
            self.splits["val"] = self.carved_val

    def _skip(self, what: str, fix: str) -> None:
        if self.strict:
            raise UserError(f"{what}; {fix} (or drop --strict to skip it)")
        warn(f"skipping: {what}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def eval_split(self, name: str = "auto") -> str:
        if name != "auto":
            if name not in self.splits:
                raise UserError(f"split '{name}' not in {self.root}; have {list(self.splits)}")
            return name
        for s in ("test", "val"):
            if self.splits.get(s):
                return s
        raise UserError(f"{self.root} has no test or val split; add one to splits.json")

    def dataset(self, ids: list[str], image_size: list[int], full_res_masks: bool = False):
        return SegmentationDataset(self, ids, image_size, full_res_masks)


def select_labeled(train_ids: list[str], n: int | None, seed: int) -> list[str]:
    """N labelled training ids, chosen deterministically from `seed` (sorted for stability)."""
    ids = sorted(train_ids)
    if n is None or n >= len(ids):
        return ids
    if n <= 0:
        raise UserError(f"--labels must be positive, got {n}")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(ids), generator=g)[:n].tolist()
    return sorted(ids[i] for i in pick)


class SegmentationDataset(torch.utils.data.Dataset):
    """(image # 3,H,W in [0,1], mask # H,W int64). Masks are checked against their images
    (size, class ids) when the dataset is built, so a bad file fails before any training."""

    def __init__(self, folder: MaskFolder, ids: list[str], image_size: list[int], full_res=False):
        self.folder, self.ids = folder, list(ids)
        self.size = (int(image_size[0]), int(image_size[1]))
        self.full_res = full_res
        n_cls, ign = folder.num_classes, folder.ignore_index
        self.exif: dict[str, bool] = {}  # apply the image's EXIF orientation?
        self.mask_sizes: set[tuple[int, int]] = set()
        for i in self.ids:
            ip, mp = folder.images[i], folder.masks[i]
            with Image.open(ip) as im, Image.open(mp) as m:
                isz, osz, msz = im.size, oriented_size(im), m.size
            if msz not in (isz, osz):
                raise UserError(
                    f"mask {mp} is {msz[0]}x{msz[1]} but its image {ip.name} is "
                    f"{osz[0]}x{osz[1]}; resize the mask (nearest) to the image size"
                )
            # a mask drawn on the EXIF-oriented image: orient the image; else use it as stored
            self.exif[i] = msz == osz
            self.mask_sizes.add(msz)
            if (self.folder.root / "classes.json").exists():
                bad = set(np.unique(_load_mask(mp)).tolist()) - set(range(n_cls)) - {ign}
                if bad:
                    raise UserError(
                        f"mask {mp} holds class id {min(bad)} but classes.json has {n_cls} "
                        f"classes (0..{n_cls - 1}, ignore {ign}); fix the mask or classes.json"
                    )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.ids[k]
        h, w = self.size
        im = load_rgb(self.folder.images[i], exif=self.exif[i]).resize((w, h), Image.BICUBIC)
        m = Image.fromarray(_load_mask(self.folder.masks[i]).astype(np.uint8))
        if not self.full_res:
            m = m.resize((w, h), Image.NEAREST)
        return to_tensor(im), torch.from_numpy(np.asarray(m, dtype=np.int64).copy())
