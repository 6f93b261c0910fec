"""A folder of unlabeled images, searched recursively, returned as float tensors in [0, 1].

Policy for messy folders (docs/data.md): files with other extensions are ignored; files with
an image extension that cannot be opened (zero-byte, corrupt, not really an image, too large)
are skipped with a one-line warning naming them, or rejected with `strict=True`; grayscale,
RGBA, CMYK, palette and 16-bit images are converted to 8-bit RGB; EXIF orientation is applied.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from dreamteacher.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
_READ_ERRORS = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    Image.DecompressionBombError,
)


def warn(msg: str) -> None:
    """A one-line warning for a skipped or converted input."""
    warnings.warn(msg, UserWarning, stacklevel=3)


def _why(e: BaseException) -> str:
    if isinstance(e, Image.DecompressionBombError):
        return "too many pixels for PIL's decompression-bomb limit"
    if isinstance(e, UnidentifiedImageError):
        return "not a readable image"
    return f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}".rstrip(": ")


def walk(root: Path) -> tuple[list[Path], list[str]]:
    """Every file under `root` (sorted), following symbolic links to folders once each (a
    link back to a folder already searched is not entered again: no loops), and the folders
    or entries that could not be read, each as "path (why)"."""
    files: list[Path] = []
    skipped: list[str] = []
    seen: set[tuple[int, int]] = set()

    def visit(folder: Path) -> None:
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                skipped.append(f"{folder}/ (a link to a folder already searched)")
                return
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            skipped.append(f"{folder}/ ({e.strerror or type(e).__name__})")
            return
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=True):
                    visit(path)
                elif entry.is_file(follow_symlinks=True):
                    files.append(path)
                elif entry.is_symlink():
                    skipped.append(f"{path} (a link to nothing)")
            except OSError as e:
                skipped.append(f"{path} ({e.strerror or type(e).__name__})")

    visit(root)
    return files, skipped


def summarize_skipped(root: Path, skipped: list[str]) -> str:
    """One line for every input skipped under `root`: the count and the first few."""
    shown = "; ".join(skipped[:5]) + ("; ..." if len(skipped) > 5 else "")
    return f"skipped {len(skipped)} unreadable input(s) under {root}: {shown}"


def list_images(
    root: str | Path, ids: list[str] | None = None, skipped: list[str] | None = None
) -> list[Path]:
    """Every image file under `root` (recursive through links, sorted). Raises a one-line
    UserError if none; unreadable folders are appended to `skipped` ("path (why)")."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"data folder {root} does not exist; pass an existing folder to --data")
    if not root.is_dir():
        raise UserError(f"--data {root} is not a folder; pass the folder that holds the images")
    if not os.access(root, os.R_OK | os.X_OK):
        raise UserError(f"cannot read folder {root} (Permission denied); fix its permissions")
    entries, unreadable = walk(root)
    if unreadable and unreadable[0].startswith(f"{root}/ ("):  # the folder itself
        why = unreadable[0][len(str(root)) + 3 : -1]
        raise UserError(f"cannot read folder {root} ({why}); fix its permissions")
    if skipped is not None:
        skipped.extend(unreadable)
    files = sorted(p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS)
    if ids is not None:
        wanted = set(ids)
        files = [p for p in files if p.stem in wanted]
    if not files:
        what = "has no image files" if entries else "is empty"
        if unreadable:
            what += f" that can be read ({summarize_skipped(root, unreadable)})"
        raise UserError(
            f"data folder {root} {what}; put {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} "
            "images in it (subfolders are searched)"
        )
    return files


def check_image(path: Path, decode: bool = False) -> str | None:
    """None if the image opens (header only, unless `decode`), else why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if decode:
                    im.load()
        if w <= 0 or h <= 0:
            return "empty image"
    except _READ_ERRORS as e:
        return _why(e)
    return None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit: keep the top 8 bits
        arr = np.asarray(im, dtype=np.int64)
        im = Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8))
    elif im.mode == "F":  # float TIFFs: stretch to 0..255
        arr = np.asarray(im, dtype=np.float64)
        arr = 255.0 * (arr - arr.min()) / max(arr.max() - arr.min(), 1e-12)
        im = Image.fromarray(arr.astype(np.uint8))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):  # alpha composited over black
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im)
    return im.convert("RGB")


def oriented_size(im: Image.Image) -> tuple[int, int]:
    """(W, H) after EXIF orientation (tags 5-8 swap the axes)."""
    w, h = im.size
    return (h, w) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)


def load_rgb(
    path: str | Path, size: tuple[int, int] | None = None, exif: bool = True
) -> Image.Image:
    """Open any supported image as 8-bit RGB (EXIF orientation applied unless exif=False).
    With `size` (W, H), a large JPEG is decoded at a reduced scale first (fast, low memory)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if size is not None and im.format == "JPEG":
                    im.draft("RGB", (size[0] * 2, size[1] * 2))
                if exif:
                    im = ImageOps.exif_transpose(im)
                return _to_rgb(im)
    except _READ_ERRORS as e:
        raise UserError(
            f"cannot read image {path} ({_why(e)}); delete or replace the file"
        ) from None


def to_tensor(im: Image.Image | np.ndarray) -> torch.Tensor:
    """PIL RGB (or its # H, W, 3 uint8 array) -> float tensor in [0, 1]. # 3, H, W"""
    arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


# decoded, resized items a dataset keeps in memory (per dataset, main process only)
MEMO_BYTES = 1 << 30


class Memo:
    """Decoded and resized items (uint8 arrays) kept in memory, so that an epoch after the
    first decodes nothing: on 2 CPU cores decoding a CamVid image costs 2-4 ms, a large share
    of a small model's step. At most `limit` bytes are kept; later items are decoded every
    time. Off in loader workers (used on CUDA): each would hold a copy of its own, and there
    the workers keep ahead of the step without it."""

    def __init__(self, limit: int | None = None):
        self.limit, self.bytes = MEMO_BYTES if limit is None else limit, 0
        self.items: dict[int, tuple[np.ndarray, ...]] = {}

    def get(self, key: int, make) -> tuple[np.ndarray, ...]:
        """The arrays stored for `key`, or make()'s (stored when in the main process and
        under the limit); read-only either way, as stored ones are shared between reads."""
        got = self.items.get(key)
        if got is not None:
            return got
        got = make()
        for a in got:
            a.flags.writeable = False
        n = sum(a.nbytes for a in got)
        if self.bytes + n <= self.limit and torch.utils.data.get_worker_info() is None:
            self.items[key] = got
            self.bytes += n
        return got


class ImageFolder(torch.utils.data.Dataset):
    """Unlabeled images resized to (H, W); flips are done on the batch by the training loop.

    Unreadable files are found by a header check when the dataset is built (skipped with a
    warning, or an error with strict=True). A file whose header reads but whose data is
    truncated fails at decode time: it is then replaced by the next image, with a warning."""

    def __init__(
        self,
        root: str | Path,
        image_size: list[int],
        ids: list[str] | None = None,
        strict: bool = False,
        files: list[Path] | None = None,
    ):
        """Every image under `root` (those named `ids` if given), or the given `files` (a
        dataset's list, under `root`)."""
        self.root = Path(root)
        self.strict = strict
        skipped: list[str] = []
        if files is None:
            files = list_images(root, ids, skipped)
        else:
            skipped += [f"{p} (missing)" for p in files if not p.is_file()]
            files = [p for p in files if p.is_file()]
        self.files: list[Path] = []
        for p in files:
            why = check_image(p)
            if why is None:
                self.files.append(p)
            else:
                skipped.append(f"{p} ({why})")
        if skipped and strict:
            raise UserError(
                f"{len(skipped)} unreadable input(s) under {self.root}: "
                f"{'; '.join(skipped[:5])}{'; ...' if len(skipped) > 5 else ''}; delete or "
                "replace them (or drop --strict to skip them)"
            )
        if skipped:
            warn(summarize_skipped(self.root, skipped))
        self.skipped = skipped
        if not self.files:
            raise UserError(
                f"no readable images in {self.root}; every image file failed to "
                "open (see the warnings)"
            )
        self.size = (int(image_size[0]), int(image_size[1]))  # H, W
        self._bad: set[int] = set()
        self.memo = Memo()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_tensor(self.array(i))  # 3, H, W

    def pil(self, i: int) -> Image.Image:
        """Image i as RGB PIL at (H, W) (see _decode)."""
        return Image.fromarray(self.array(i))

    def array(self, i: int) -> np.ndarray:
        """Image i at (H, W) as a read-only # H, W, 3 uint8 array, decoded once (Memo)."""
        return self.memo.get(i, lambda: (np.array(self._decode(i), dtype=np.uint8),))[0]

    def _decode(self, i: int) -> Image.Image:
        """Image i as RGB PIL at (H, W); an undecodable file is replaced by the next one."""
        for k in range(len(self.files)):
            j = (i + k) % len(self.files)
            if j in self._bad:
                continue
            try:
                im = load_rgb(self.files[j], (self.size[1], self.size[0]))
            except UserError as e:
                if self.strict:
                    raise
                self._bad.add(j)
                warn(f"skipping {self.files[j]} from now on: {e}")
                continue
            return im.resize((self.size[1], self.size[0]), Image.BICUBIC)
        raise UserError(f"no image in {self.root} could be decoded; check the files")
