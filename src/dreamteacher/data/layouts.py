"""Standard segmentation datasets in the layout they are downloaded in (`--data KIND:PATH`).

Each kind gives image and mask paths per id, its splits, class names, ignore index and a
lookup table from the values stored in its masks to class ids. torchvision's dataset classes
list the files where they exist (VOCSegmentation, Cityscapes, OxfordIIITPet); ADE20K and
CamVid's SegNet layout are listed here. MaskFolder (segmentation.py) checks the pairs and
reads the masks through the table, so every command sees the same thing as with a mask
folder.

Splits: a dataset's official evaluation split is the `test` split (VOC, Cityscapes and
ADE20K publish no test labels, so their `val` is the reported split); the val split on which
settings are chosen is then carved from train, as for any folder without one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dreamteacher.data.folder import IMAGE_EXTENSIONS
from dreamteacher.dataspec import KINDS, split_data
from dreamteacher.errors import UserError

UNKNOWN = -1  # a value the kind's masks never hold (in `lut`)

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
CAMVID_CLASSES = [
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
    "pedestrian", "bicyclist",
]  # fmt: skip
ADE20K_CLASSES = 150


@dataclass
class Layout:
    """One dataset on disk: `images[id]` and `masks[id]` paths, `splits` {name: ids},
    `lut[v]` the class id of stored mask value v (ignore_index, or UNKNOWN if v never
    occurs in this kind's masks)."""

    kind: str
    root: Path
    class_names: list[str]
    lut: np.ndarray
    ignore_index: int = 255
    images: dict[str, Path] = field(default_factory=dict)
    masks: dict[str, Path] = field(default_factory=dict)
    splits: dict[str, list[str]] = field(default_factory=dict)

    def add(self, split: str, pairs: list[tuple[str, Path, Path]]) -> None:
        """(id, image, mask) triples into `split`; an id may occur once in the dataset."""
        for i, im, m in pairs:
            if i in self.images:
                raise UserError(f"{self.kind}:{self.root} has two images with the id '{i}'")
            self.images[i], self.masks[i] = Path(im), Path(m)
            self.splits.setdefault(split, []).append(i)

    def known_values(self) -> set[int]:
        return set(np.flatnonzero(self.lut != UNKNOWN).tolist())


def _table(pairs: dict[int, int], size: int = 256) -> np.ndarray:
    lut = np.full(size, UNKNOWN, dtype=np.int64)
    for v, c in pairs.items():
        lut[v] = c
    return lut


def _need(root: Path, *parts: str) -> None:
    """One line naming the first missing part of the layout."""
    for part in parts:
        if not (root / part).exists():
            raise UserError(f"no {part} under {root}; is it the right folder for this kind?")


def _first(path: Path, candidates: list[Path], marker: str, kind: str) -> Path:
    """The first candidate holding `marker` (the user may name the dataset folder itself or
    the folder around it)."""
    for c in candidates:
        if (c / marker).is_dir():
            return c
    raise UserError(f"no {marker}/ under {path}; pass {kind}:FOLDER, {KINDS[kind]}")


def _by_stem(img_dir: Path, ann_dir: Path) -> list[tuple[str, Path, Path]]:
    """Every image in `img_dir` with the mask of the same stem in `ann_dir` (id = stem)."""
    ims = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    return [(p.stem, p, ann_dir / f"{p.stem}.png") for p in ims]


def voc(path: Path) -> Layout:
    """Pascal VOC 2012 segmentation: VOCdevkit/VOC2012/{JPEGImages, SegmentationClass,
    ImageSets/Segmentation/{train,val}.txt}; 20 classes and background, 255 = boundary."""
    from torchvision.datasets import VOCSegmentation

    # the folder holding VOCdevkit/, or VOCdevkit/ itself, or VOCdevkit/VOC2012/
    up = {"VOCdevkit": path.parent, "VOC2012": path.parent.parent}.get(path.name, path)
    root = _first(path, [path, up], "VOCdevkit", "voc")
    base = root / "VOCdevkit" / "VOC2012"
    _need(base, "JPEGImages", "SegmentationClass", "ImageSets/Segmentation")
    lut = _table({**{c: c for c in range(len(VOC_CLASSES))}, 255: 255})
    layout = Layout("voc", base, list(VOC_CLASSES), lut)
    for ours, theirs in (("train", "train"), ("test", "val")):
        _need(base, f"ImageSets/Segmentation/{theirs}.txt")
        ds = VOCSegmentation(str(root), year="2012", image_set=theirs, download=False)
        layout.add(ours, [(Path(im).stem, im, m) for im, m in zip(ds.images, ds.masks)])
    return layout


def cityscapes(path: Path) -> Layout:
    """Cityscapes fine annotations: leftImg8bit/{train,val}/CITY/*_leftImg8bit.png and
    gtFine/{train,val}/CITY/*_gtFine_labelIds.png; the 19 train ids, 255 = ignored."""
    from torchvision.datasets import Cityscapes

    _need(path, "leftImg8bit", "gtFine")
    used = sorted(
        (c for c in Cityscapes.classes if 0 <= c.train_id < 255), key=lambda c: c.train_id
    )
    lut = _table({c.id: c.train_id if c in used else 255 for c in Cityscapes.classes if c.id >= 0})
    layout = Layout("cityscapes", path, [c.name for c in used], lut)
    for ours, theirs in (("train", "train"), ("test", "val")):
        _need(path, f"leftImg8bit/{theirs}", f"gtFine/{theirs}")
        ds = Cityscapes(str(path), split=theirs, mode="fine", target_type="semantic")
        pairs = [
            (Path(im).name.split("_leftImg8bit")[0], Path(im), Path(t[0]))
            for im, t in zip(ds.images, ds.targets)
            if Path(im).suffix.lower() in IMAGE_EXTENSIONS
        ]
        layout.add(ours, sorted(pairs))
    return layout


def ade20k(path: Path) -> Layout:
    """ADE20K SceneParsing (ADEChallengeData2016): images/{training,validation}/*.jpg and
    annotations/{training,validation}/*.png; 150 classes stored as 1..150, 0 = other
    (ignored). Class names from objectInfo150.txt when present."""
    root = _first(path, [path, path / "ADEChallengeData2016"], "annotations", "ade20k")
    _need(root, "images/training", "annotations/training", "images/validation")
    names = [f"class_{k}" for k in range(1, ADE20K_CLASSES + 1)]
    info = root / "objectInfo150.txt"
    if info.is_file():  # Idx, Ratio, Train, Val, Name ("wall", "building;edifice", ...)
        for line in info.read_text(errors="replace").splitlines()[1:]:
            cols = line.split("\t")
            if len(cols) >= 5 and cols[0].strip().isdigit():
                k = int(cols[0])
                if 1 <= k <= ADE20K_CLASSES:
                    names[k - 1] = cols[4].split(";")[0].strip()
    lut = _table({0: 255, **{k: k - 1 for k in range(1, ADE20K_CLASSES + 1)}})
    layout = Layout("ade20k", root, names, lut)
    for ours, theirs in (("train", "training"), ("test", "validation")):
        _need(root, f"annotations/{theirs}")
        layout.add(ours, _by_stem(root / "images" / theirs, root / "annotations" / theirs))
    return layout


def pet(path: Path) -> Layout:
    """Oxford-IIIT Pet: oxford-iiit-pet/{images, annotations/trimaps,
    annotations/{trainval,test}.txt}; trimaps 1 = pet, 2 = background, 3 = boundary (ignored)."""
    from torchvision.datasets import OxfordIIITPet

    up = path.parent if path.name == "oxford-iiit-pet" else path
    root = _first(path, [path, up], "oxford-iiit-pet", "pet")
    base = root / "oxford-iiit-pet"
    _need(base, "images", "annotations/trimaps")
    layout = Layout("pet", base, ["background", "pet"], _table({1: 1, 2: 0, 3: 255}))
    for ours, theirs in (("train", "trainval"), ("test", "test")):
        _need(base, f"annotations/{theirs}.txt")
        ds = OxfordIIITPet(str(root), split=theirs, target_types="segmentation", download=False)
        # (its file lists are private attributes; the files themselves are not opened here)
        layout.add(ours, [(Path(im).stem, im, m) for im, m in zip(ds._images, ds._segs)])
    return layout


def camvid(path: Path) -> Layout:
    """CamVid as SegNet distributes it: {train,val,test}/*.png with {train,val,test}annot/
    masks; 11 classes, 11 = void (ignored)."""
    root = _first(path, [path, path / "CamVid"], "trainannot", "camvid")
    _need(root, "train")
    lut = _table({**{c: c for c in range(len(CAMVID_CLASSES))}, 11: 255})
    layout = Layout("camvid", root, list(CAMVID_CLASSES), lut)
    for split in ("train", "val", "test"):
        if split != "train" and not (root / split).is_dir():
            continue
        _need(root, f"{split}annot")
        layout.add(split, _by_stem(root / split, root / f"{split}annot"))
    return layout


READERS = {"voc": voc, "cityscapes": cityscapes, "ade20k": ade20k, "pet": pet, "camvid": camvid}
assert set(READERS) == set(KINDS)


def open_layout(data: str | Path) -> Layout | None:
    """The Layout that `--data KIND:PATH` names; None for a plain folder."""
    kind, path = split_data(str(data))
    if kind is None:
        if re.fullmatch(r"[A-Za-z][\w-]+:.+", str(data)) and not Path(data).exists():
            raise UserError(
                f"--data {data}: unknown dataset kind '{str(data).split(':')[0]}'; use "
                f"{', '.join(KINDS)} (KIND:PATH), or a folder"
            )
        return None
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"--data {data}: {folder} is not a folder; pass {kind}:FOLDER, {KINDS[kind]}"
        )
    layout = READERS[kind](folder)
    if not any(layout.splits.values()):
        raise UserError(f"--data {data} lists no images; check the folder")
    return layout
