"""Decoded items kept in memory (data.folder.Memo) by ImageFolder and SegmentationDataset."""

import numpy as np
import pytest
import torch
from PIL import Image

from dreamteacher.data import ImageFolder, MaskFolder
from dreamteacher.data.folder import Memo
from dreamteacher.data.synthetic import make_scenes


def _images(d, n=4):
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), np.uint8)).save(d / f"{i}.jpg")
    return d


def _overwrite(files):
    """Replace every file's pixels: a read that decodes again sees grey."""
    for p in files:
        Image.new("RGB", (30, 20), (128, 128, 128)).save(p, format=Image.open(p).format)


def test_image_folder_decodes_each_image_once_and_returns_the_same_bits(tmp_path):
    d = _images(tmp_path / "imgs")
    ds, plain = ImageFolder(d, [16, 24]), ImageFolder(d, [16, 24])
    plain.memo = Memo(limit=0)  # keeps nothing: decodes at every read, as before the memo
    first = [ds[i] for i in range(len(ds))]
    assert all(torch.equal(a, plain[i]) for i, a in enumerate(first))
    assert ds.memo.bytes == 4 * 16 * 24 * 3
    _overwrite(ds.files)
    assert all(torch.equal(ds[i], a) for i, a in enumerate(first))  # from memory
    assert not torch.equal(plain[0], first[0])  # the files did change
    assert np.array_equal(np.asarray(ds.pil(2)), (first[2] * 255).round().byte().permute(1, 2, 0))


def test_what_a_caller_gets_cannot_change_the_memo(tmp_path):
    ds = ImageFolder(_images(tmp_path / "imgs"), [16, 24])
    x = ds[0]
    x.add_(1.0)  # a tensor of its own
    assert ds[0].max() <= 1.0
    with pytest.raises(ValueError, match="read-only"):
        ds.array(0)[0, 0, 0] = 7
    before = ds.array(0).copy()
    im = ds.pil(0)
    im.paste((1, 2, 3), (0, 0, 24, 16))  # PIL copies a read-only buffer before writing
    assert np.asarray(im).max() == 3 and np.array_equal(ds.array(0), before)


def test_the_memo_stops_at_its_limit(tmp_path):
    ds = ImageFolder(_images(tmp_path / "imgs"), [16, 24])
    ds.memo = Memo(limit=16 * 24 * 3)  # one image
    a0, a1 = ds[0], ds[1]
    assert list(ds.memo.items) == [0] and ds.memo.bytes == 16 * 24 * 3
    _overwrite(ds.files)
    assert torch.equal(ds[0], a0)  # kept
    assert not torch.equal(ds[1], a1)  # past the limit: decoded again


class _MemoSize(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        self.ds[i]
        return len(self.ds.memo.items)


def test_loader_workers_keep_nothing(tmp_path):
    ds = ImageFolder(_images(tmp_path / "imgs"), [16, 24])
    loader = torch.utils.data.DataLoader(_MemoSize(ds), batch_size=None, num_workers=1)
    assert list(loader) == [0, 0, 0, 0]  # each worker read decodes, none is stored
    assert list(torch.utils.data.DataLoader(_MemoSize(ds), batch_size=None)) == [1, 2, 3, 4]


@pytest.mark.parametrize("full_res", [False, True])
def test_segmentation_items_are_decoded_once_with_the_same_bits(tmp_path, full_res):
    root = make_scenes(tmp_path / "s", n=6, image_size=(24, 32), seed=1)
    folder = MaskFolder(root)
    ids = folder.splits["train"]
    ds = folder.dataset(ids, [16, 24], full_res)
    plain = folder.dataset(ids, [16, 24], full_res)
    plain.memo = Memo(limit=0)
    first = [ds[k] for k in range(len(ds))]
    for k, (x, y) in enumerate(first):
        px, py = plain[k]
        assert torch.equal(x, px) and torch.equal(y, py) and y.dtype == torch.int64
        assert y.shape == ((24, 32) if full_res else (16, 24))
    for i in ids:
        Image.new("RGB", (32, 24), (128, 128, 128)).save(folder.images[i])
    for k, (x, y) in enumerate(first):
        x2, y2 = ds[k]
        assert torch.equal(x2, x) and torch.equal(y2, y)
    assert not torch.equal(plain[0][0], first[0][0])
    y = ds[0][1]
    y.fill_(0)  # the caller's own tensor
    assert torch.equal(ds[0][1], first[0][1])
