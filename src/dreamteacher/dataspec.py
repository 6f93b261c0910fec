"""What `--data` may name, importable without torch: a folder (of images, or in the mask-folder
format), or `KIND:PATH`, a standard segmentation dataset in the layout it is downloaded in
(data/layouts.py reads each kind; docs/data.md lists them)."""

from __future__ import annotations

from pathlib import Path

# KIND of `--data KIND:PATH` -> what PATH is
KINDS: dict[str, str] = {
    "voc": "Pascal VOC 2012: the folder holding VOCdevkit/",
    "cityscapes": "Cityscapes: the folder holding leftImg8bit/ and gtFine/",
    "ade20k": "ADE20K SceneParsing: ADEChallengeData2016/ or the folder holding it",
    "pet": "Oxford-IIIT Pet: the folder holding oxford-iiit-pet/",
    "camvid": "CamVid in SegNet's layout: the folder holding train/ and trainannot/",
}
FORMS = f"a folder, or KIND:PATH with KIND one of {', '.join(KINDS)}"


def split_data(value: str) -> tuple[str | None, str]:
    """(kind, path) of a `--data` value: (None, value) for a plain folder. A prefix that is not
    a known kind is part of the path (e.g. `C:` or a folder whose name has a colon)."""
    kind, sep, path = value.partition(":")
    if sep and kind.lower() in KINDS and path:
        return kind.lower(), path
    return None, value


def data_folder(value: str) -> Path:
    """The folder a `--data` value reads, with its kind prefix removed."""
    return Path(split_data(value)[1])


def resolved_data(value: str) -> str:
    """A `--data` value with its path made absolute (the kind prefix kept), for cell keys."""
    kind, path = split_data(value)
    full = str(Path(path).expanduser().resolve())
    return f"{kind}:{full}" if kind else full
