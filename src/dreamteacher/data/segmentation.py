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
    Memo,
    check_image,
    load_rgb,
    oriented_size,
    to_tensor,
    warn,
)
from dreamteacher.data.layouts import Layout, open_layout
from dreamteacher.dataspec import KINDS
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


def with_val(splits: dict[str, list[str]]) -> tuple[dict[str, list[str]], list[str]]:
    """(splits, carved): `splits` with a val split carved from train (VAL_FRACTION) when it
    has none, and the carved ids (empty when val was there)."""
    if splits.get("val") or len(splits.get("train", [])) < 2:
        return dict(splits), []
    out = dict(splits)
    out["train"], carved = carve(splits["train"], VAL_FRACTION)
    out["val"] = carved
    return out, carved


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


def _class_ids(mask: np.ndarray) -> set[int]:
    """The ids present in a mask (# H, W)."""
    if mask.size and mask.min() >= 0 and mask.max() < 65536:
        return set(np.flatnonzero(np.bincount(mask.ravel())).tolist())
    return set(np.unique(mask).tolist())


class MaskFolder:
    """Index of a mask-folder dataset: ids per split, class names, ignore index.

    Policy (docs/data.md): an image without a mask, a mask without an image, and an unreadable
    image or mask are skipped with a one-line warning (an error with strict=True); a mask of
    another size than its image, or holding a class id unknown to classes.json, is an error."""

    def __init__(self, root: str | Path, strict: bool = False):
        self.strict = strict
        self._skips: list[tuple[str, str]] = []
        # `--data KIND:PATH`: a standard dataset in its own layout (layouts.py)
        self.layout = open_layout(root)
        self.lut: np.ndarray | None = None  # stored mask value -> class id (layouts only)
        if self.layout is None:
            self.root = Path(root)
            images, masks = self._scan_mask_folder()
            mask_dir = self.root / "masks"
        else:
            self.root = self.layout.root
            images, masks = self._scan_layout(self.layout)
            mask_dir = self.root
        self.images, self.masks, self.skipped = {}, {}, set()
        # every pair is checked here, whichever a command will use, so that a folder that
        # passes with few labels passes with all of them; all bad masks are reported at once
        self.exif: dict[str, bool] = {}  # apply the image's EXIF orientation?
        self.mask_size: dict[str, tuple[int, int]] = {}  # W, H
        present: dict[str, set[int]] = {}  # class ids in each mask
        bad: list[str] = []
        for i in sorted(set(images) & set(masks)):
            ip, mp = images[i], masks[i]
            # a mask folder's labelled set is small: decode it; a standard dataset's files
            # (thousands, as downloaded) are checked by their headers
            why = check_image(ip, decode=self.layout is None)
            if why is not None:
                self._skip(f"image {ip} is unreadable ({why})", "replace the file")
                self.skipped.add(i)
                continue
            try:
                arr = _load_mask(mp)  # H, W
            except MaskFormatError as e:
                bad.append(str(e).split("; ")[0])
                continue
            except UserError as e:
                self._skip(str(e).split(";")[0], "replace the file")
                self.skipped.add(i)
                continue
            with Image.open(ip) as im:
                isz, osz = im.size, oriented_size(im)
            msz = (arr.shape[1], arr.shape[0])
            if msz not in (isz, osz):
                bad.append(
                    f"mask {mp} is {msz[0]}x{msz[1]} but its image {ip.name} is {osz[0]}x{osz[1]}"
                )
                continue
            # a mask drawn on the EXIF-oriented image: orient the image; else use it as stored
            self.exif[i], self.mask_size[i] = msz == osz, msz
            present[i] = _class_ids(arr)
            self.images[i], self.masks[i] = ip, mp
        self._report_skipped()
        if bad:
            raise UserError(
                f"{len(bad)} bad mask(s) in {mask_dir}: {'; '.join(bad[:5])}"
                f"{'; ...' if len(bad) > 5 else ''}; resize the masks (nearest) to their "
                "images' sizes, as single-channel uint8 PNGs"
            )
        if not self.images:
            raise UserError(f"{self.root} has no readable image/mask pairs (see the warnings)")
        self.dropped: dict[str, list[str]] = {}  # ids a split lists but that were skipped
        # ids moved from train to a val split made here (empty when the folder has val)
        self.carved_val: list[str] = []
        if self.layout is not None:
            self._from_layout(self.layout, present)
        else:
            self._classes_json(present, mask_dir)
            self._splits_json(images)
            self.splits, self.carved_val = with_val(self.splits)

    def _scan_mask_folder(self) -> tuple[dict[str, Path], dict[str, Path]]:
        """images/<id>.<ext> and masks/<id>.png; an unmatched file is skipped."""
        img_dir, mask_dir = self.root / "images", self.root / "masks"
        if not img_dir.is_dir() or not mask_dir.is_dir():
            raise UserError(
                f"{self.root} is not a mask folder: it needs images/ and masks/ subfolders "
                f"(or, for a standard dataset, KIND:PATH with KIND one of {', '.join(KINDS)})"
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
        return images, masks

    def _scan_layout(self, layout: Layout) -> tuple[dict[str, Path], dict[str, Path]]:
        """The pairs a dataset lists; one whose image or mask file is missing is skipped."""
        images, masks = {}, {}
        for i in layout.images:
            ip, mp = layout.images[i], layout.masks[i]
            if not ip.is_file():
                self._skip(f"image {ip} is missing", "restore the dataset's files")
            elif not mp.is_file():
                self._skip(f"image {ip} has no mask {mp}", "restore the dataset's files")
            else:
                images[i], masks[i] = ip, mp
        return images, masks

    def _from_layout(self, layout: Layout, present: dict[str, set[int]]) -> None:
        """Classes, ignore index and splits as the dataset defines them; every mask value
        must be one its kind stores."""
        known = layout.known_values()
        self._refuse_unknown(
            present,
            known,
            f"of {layout.kind}:{layout.root} hold values that {layout.kind} masks do not hold",
            "is this the right kind?",
        )
        self.class_names, self.ignore_index = list(layout.class_names), layout.ignore_index
        self.lut = layout.lut
        # val carved from every listed train id, as unlabeled_images does without the checks
        listed, carved = with_val(layout.splits)
        self.carved_val = [i for i in carved if i in self.images]
        self.splits = {s: [i for i in ids if i in self.images] for s, ids in listed.items()}
        self.dropped = {s: [i for i in ids if i not in self.images] for s, ids in listed.items()}

    def _classes_json(self, present: dict[str, set[int]], mask_dir: Path) -> None:
        """Class names and ignore index from classes.json, or class_<k> up to the largest id."""
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
            n = len(self.class_names)
            known = set(range(n)) | {ign}
            self._refuse_unknown(
                present,
                known,
                f"in {mask_dir} hold class ids unknown to classes.json ({n} classes, "
                f"0..{n - 1}, ignore {ign})",
                "fix the masks or classes.json",
            )
        else:
            self.ignore_index = 255
            ids: set[int] = set().union(*present.values())
            ids.discard(self.ignore_index)
            self.class_names = [f"class_{i}" for i in range(max(ids) + 1 if ids else 1)]

    def _splits_json(self, images: dict[str, Path]) -> None:
        """Splits from splits.json, or a test part carved from every id."""
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
                        f"{self.root / 'images'}; fix the id or add the image"
                    )
                self.splits[name] = [i for i in ids if i in self.images]
                self.dropped[name] = [i for i in ids if i not in self.images]
        else:
            train, test = carve(sorted(self.images), TEST_FRACTION)
            self.splits = {"train": train, "test": test}

    def _refuse_unknown(
        self, present: dict[str, set[int]], known: set[int], what: str, fix: str
    ) -> None:
        """One line naming the masks (the first five, and the count) holding ids not in
        `known`, with the smallest such id of each."""
        unknown = [(i, min(ids - known)) for i, ids in present.items() if ids - known]
        if unknown:
            shown = "; ".join(f"{self.masks[i].name} has {v}" for i, v in unknown[:5])
            more = "; ..." if len(unknown) > 5 else ""
            raise UserError(f"{len(unknown)} mask(s) {what}: {shown}{more}; {fix}")

    def _skip(self, what: str, fix: str) -> None:
        """Note a skipped input; _report_skipped reports them all in one line."""
        self._skips.append((what, fix))

    def _report_skipped(self) -> None:
        if not self._skips:
            return
        shown = "; ".join(w for w, _ in self._skips[:5]) + ("; ..." if len(self._skips) > 5 else "")
        fixes = "; ".join(dict.fromkeys(f for _, f in self._skips))
        if self.strict:
            raise UserError(
                f"{len(self._skips)} input(s) to fix in {self.root}: {shown}; {fixes} "
                "(or drop --strict to skip them)"
            )
        warn(f"skipped {len(self._skips)} input(s) in {self.root}: {shown}")

    def load_mask(self, i: str) -> np.ndarray:
        """Mask `i` as class ids (ignore_index where ignored). # H, W"""
        arr = _load_mask(self.masks[i])
        return arr if self.lut is None else self.lut[arr]

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
    """N labelled training ids, chosen deterministically from `seed` (sorted for stability);
    all of them for None. More than there are is refused, not clamped."""
    ids = sorted(train_ids)
    if n is not None and n <= 0:
        raise UserError(f"--labels must be positive, got {n}")
    if n is not None and n > len(ids):
        raise UserError(
            f"labels={n} asks for more than the {len(ids)} train images; use {len(ids)} or "
            "fewer (no labels setting: all of them)"
        )
    if n is None or n == len(ids):
        return ids
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(ids), generator=g)[:n].tolist()
    return sorted(ids[i] for i in pick)


class SegmentationDataset(torch.utils.data.Dataset):
    """(image # 3,H,W in [0,1], mask # H,W int64). Masks were checked against their images
    (size, class ids) by MaskFolder, so a bad file fails before any training."""

    def __init__(self, folder: MaskFolder, ids: list[str], image_size: list[int], full_res=False):
        self.folder, self.ids = folder, list(ids)
        self.size = (int(image_size[0]), int(image_size[1]))
        self.full_res = full_res
        self.exif = {i: folder.exif[i] for i in self.ids}  # (checked by MaskFolder)
        self.mask_sizes: set[tuple[int, int]] = {folder.mask_size[i] for i in self.ids}
        self.memo = Memo()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        im, m = self.memo.get(k, lambda: self._decode(k))  # decoded once (Memo)
        return to_tensor(im), torch.from_numpy(m.astype(np.int64))

    def _decode(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(image # H, W, 3 uint8, mask # H, W uint8 class ids, at full resolution with
        full_res)."""
        i = self.ids[k]
        h, w = self.size
        im = load_rgb(self.folder.images[i], exif=self.exif[i]).resize((w, h), Image.BICUBIC)
        m = Image.fromarray(self.folder.load_mask(i).astype(np.uint8))
        if not self.full_res:
            m = m.resize((w, h), Image.NEAREST)
        return np.array(im, dtype=np.uint8), np.array(m, dtype=np.uint8)
