import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dreamteacher as dt
from dreamteacher.data import unlabeled_images
from dreamteacher.errors import UserError
from dreamteacher.randomness import mix
from dreamteacher.teachers import load_teacher
from dreamteacher.teachers.cache import CachedTargets, FeatureCache, random_cache
from tests.conftest import read_log


@pytest.fixture(scope="module")
def cache_dir(scenes, teacher_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    out.mkdir()  # an empty folder made beforehand is taken as the cache's place
    return dt.api.cache_features(
        data=str(scenes),
        teacher=str(teacher_run),
        out=str(out),
        splits=["train", "val"],
        draws=2,
        batch_size=5,
        device="cpu",
    )


def test_cache_holds_the_teacher_features(cache_dir, scenes, teacher_run):
    meta = json.loads((cache_dir / "meta.json").read_text())
    teacher = load_teacher(teacher_run)
    assert meta["images"] == 16 and meta["draws"] == 2
    assert [s[0] for s in meta["levels"]] == teacher.channels
    arrays = [np.load(cache_dir / f"level{i}.npy", mmap_mode="r") for i in range(4)]
    assert arrays[0].shape == (16, 2, teacher.channels[0], 8, 8) and arrays[0].dtype == np.float16
    assert meta["bytes_per_image"] == sum(a[0].size for a in arrays) * 2
    data = unlabeled_images(scenes, [32, 32], ["train", "val"])
    x = data[3].unsqueeze(0)
    for j, xj in ((0, x), (1, x.flip(-1))):  # odd draws are of the flipped image
        ref = teacher(xj, [mix(0, 99991, 3, j)])
        for lvl in range(4):
            got = torch.from_numpy(arrays[lvl][3, j].astype(np.float32))
            assert torch.allclose(got, ref[lvl][0], atol=2e-2 * ref[lvl].abs().max().item())


def test_cached_items_read_the_draw_of_their_step_key(cache_dir, scenes):
    """Item (step, i) is image i, flipped iff its draw j = mix(mix(seed, step, i), 5) mod K
    is odd, with draw j's targets: the draw online training would key for that sample."""
    data = unlabeled_images(scenes, [32, 32], ["train", "val"])
    items = CachedTargets(data, FeatureCache(cache_dir, data), seed=3)
    arrays = [np.load(cache_dir / f"level{i}.npy", mmap_mode="r") for i in range(4)]
    seen = set()
    for step, i in [(0, 0), (0, 5), (1, 5), (2, 5), (7, 11), (8, 11)]:
        j = mix(mix(3, step, i), 5) % 2
        seen.add(j)
        idx, x, *targets = items[(step, i)]
        assert idx == i and len(targets) == 4
        assert torch.equal(x, data[i].flip(-1) if j else data[i])
        for lvl, t in enumerate(targets):
            assert t.dtype == torch.float16
            assert torch.equal(t, torch.from_numpy(np.array(arrays[lvl][i, j])))
    assert seen == {0, 1}  # both orientations came up


def test_cache_is_not_copied_into_worker_pickles(cache_dir, scenes):
    """A spawned DataLoader worker gets the cache's path, not its arrays (np.memmap would
    pickle its whole contents)."""
    data = unlabeled_images(scenes, [32, 32], ["train", "val"])
    cache = FeatureCache(cache_dir, data)
    cache.read(0, 0)  # the level files are open in this process
    blob = pickle.dumps(cache)
    assert len(blob) < 8_000, len(blob)
    again = pickle.loads(blob)
    assert all(np.array_equal(a, b) for a, b in zip(again.read(4, 1), cache.read(4, 1)))


def test_cache_build_with_workers_and_bf16(cache_dir, scenes, teacher_run, tmp_path):
    """Decoding workers change nothing in the stored targets; precision=bf16 is applied (the
    targets differ from fp32 by bf16 rounding only)."""
    kw = dict(data=str(scenes), teacher=str(teacher_run), splits=["train", "val"], draws=2)
    kw |= dict(batch_size=5, device="cpu")
    workers = dt.api.cache_features(out=str(tmp_path / "w"), num_workers=2, **kw)
    bf16 = dt.api.cache_features(out=str(tmp_path / "b"), precision="bf16", **kw)
    meta = [json.loads((c / "meta.json").read_text())["precision"] for c in (workers, bf16)]
    assert meta == ["fp32", "bf16"]  # auto on a CPU is fp32
    with pytest.raises(UserError, match="precision must be auto, fp32 or bf16"):
        dt.api.cache_features(out=str(tmp_path / "f"), precision="fp16", **kw)
    assert not (tmp_path / "f").exists() and not (tmp_path / "f.partial").exists()
    for lvl in range(4):
        ref = np.load(cache_dir / f"level{lvl}.npy").astype(np.float32)
        assert np.array_equal(np.load(workers / f"level{lvl}.npy").astype(np.float32), ref)
        b = np.load(bf16 / f"level{lvl}.npy").astype(np.float32)
        err = np.abs(b - ref).max() / np.abs(ref).max()
        assert 0 < err < 0.1, (lvl, err)


class _Interrupted(Exception):
    pass


def _stop_after(batches: int, seen: list[int]):
    """As `progress`: notes each batch's size; the build is interrupted when it asks for
    batch `batches` + 1."""

    def progress(loader):
        for b, x in enumerate(loader):
            if b == batches:
                raise _Interrupted
            seen.append(len(x))
            yield x

    return progress


def test_an_interrupted_build_resumes_to_the_same_bytes(teacher_run, scenes, tmp_path):
    """16 images in batches of 3 (6 batches), progress recorded every 2 batches. Stopped
    after batch 3 (record: 6 images; batch 3 written past it is cut back), refused
    changes, resumed and stopped again after batch 5 (record: 12), resumed to the end: the
    files are byte-identical to an uninterrupted build's."""
    from dreamteacher.teachers.cache import build_cache

    teacher = load_teacher(teacher_run)
    data = unlabeled_images(scenes, [32, 32], ["train", "val"])
    kw = dict(draws=3, batch_size=3, save_every=2)
    ref = build_cache(teacher, data, tmp_path / "ref", **kw)
    out, partial, seen = tmp_path / "c", tmp_path / "c.partial", []
    with pytest.raises(_Interrupted):
        build_cache(teacher, data, out, progress=_stop_after(3, seen), **kw)
    assert not out.exists() and json.loads((partial / "progress.json").read_text())["done"] == 6
    written = [(partial / f"level{lvl}.npy").stat().st_size for lvl in range(4)]

    # refusals, none of which touches the files
    with pytest.raises(UserError, match="c.partial holds an interrupted build.*--resume"):
        build_cache(teacher, data, out, **kw)
    with pytest.raises(UserError, match="c.partial was started with draws=3, now 2"):
        build_cache(teacher, data, out, resume=True, **(kw | {"draws": 2}))
    other = load_teacher(teacher_run, strides=[8, 16, 32, 4])  # other level shapes
    with pytest.raises(UserError, match=r"c.partial holds levels \[.*the teacher now gives"):
        build_cache(other, data, out, resume=True, **kw)
    record = (partial / "progress.json").read_text()
    for broken, why in ((record[:20], "cannot be read"), ("{}", "is damaged")):
        (partial / "progress.json").write_text(broken)  # (atomic writes make this unlikely)
        with pytest.raises(UserError, match=f"progress.json {why}.*delete .*c.partial"):
            build_cache(teacher, data, out, resume=True, **kw)
    (partial / "progress.json").write_text(record)
    assert [(partial / f"level{lvl}.npy").stat().st_size for lvl in range(4)] == written

    seen.clear()
    with pytest.raises(_Interrupted):
        build_cache(teacher, data, out, resume=True, progress=_stop_after(3, seen), **kw)
    assert seen == [3, 3, 3]  # batches 3, 4, 5
    assert json.loads((partial / "progress.json").read_text())["done"] == 12
    seen.clear()
    build_cache(teacher, data, out, resume=True, progress=_stop_after(99, seen), **kw)
    assert seen == [3, 1]  # batches 5 and 6: images 12 .. 15
    for lvl in range(4):
        a, b = ((d / f"level{lvl}.npy").read_bytes() for d in (ref, out))
        assert a == b, lvl
    meta, ref_meta = (json.loads((d / "meta.json").read_text()) for d in (out, ref))
    assert meta.pop("build_s") > 0 and ref_meta.pop("build_s") > 0
    assert meta == ref_meta
    assert not partial.exists() and not (out / "progress.json").exists()

    again = build_cache(teacher, data, out, resume=True, progress=_stop_after(99, seen), **kw)
    assert again == out and seen == [3, 1]  # complete: nothing encoded
    out.rename(partial)  # as if stopped after meta.json was written, before the rename
    with pytest.raises(UserError, match="c.partial holds an interrupted build"):
        build_cache(teacher, data, out, **kw)
    build_cache(teacher, data, out, resume=True, progress=_stop_after(99, seen), **kw)
    assert seen == [3, 1] and (out / "meta.json").exists() and not partial.exists()


def test_an_empty_dataset_is_refused(teacher_run, tmp_path):
    from dreamteacher.teachers.cache import build_cache

    class Empty(torch.utils.data.Dataset):
        root, files = tmp_path, []

        def __len__(self) -> int:
            return 0

    with pytest.raises(UserError, match="holds no images to encode"):
        build_cache(load_teacher(teacher_run), Empty(), tmp_path / "c")
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()


def test_a_folder_that_is_not_a_cache_is_never_replaced(teacher_run, scenes, tmp_path):
    """--out pointing at a folder with other files (runs/, say) is refused before anything is
    encoded, and the files stay (the build used to delete it to rename the cache there)."""
    from dreamteacher.teachers.cache import build_cache

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "keep.txt").write_text("a user's file")
    data = unlabeled_images(scenes, [32, 32], ["train", "val"])
    with pytest.raises(UserError, match="runs exists and is not a feature cache; choose another"):
        build_cache(load_teacher(teacher_run), data, tmp_path / "runs", draws=1)
    assert (tmp_path / "runs" / "keep.txt").read_text() == "a user's file"
    assert not (tmp_path / "runs.partial").exists()


def test_pretrain_from_cache(cache_dir, scenes, teacher_run, tmp_path):
    """Reading the cache in two loader workers gives the run that reading it in the main
    process gives, bit for bit (the draws follow the step keys wherever they are read)."""
    runs = [
        dt.pretrain(
            data=str(scenes),
            teacher=str(teacher_run),
            out=str(tmp_path / f"p{workers}"),
            splits=["train", "val"],
            backbone="resnet18",
            epochs=2,
            batch_size=4,
            warmup_epochs=0,
            feature_cache=str(cache_dir),
            device="cpu",
            log_every=1,
            num_workers=workers,
        )
        for workers in (0, 2)
    ]
    logs = [read_log(r) for r in runs]
    assert len(logs[0]) == 8 and all(np.isfinite(r["loss"]) for r in logs[0])
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    a, b = (torch.load(r / "final.pt", weights_only=False)["backbone_state"] for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="built for another set of images"):
        dt.pretrain(
            data=str(scenes),
            teacher=str(teacher_run),
            out=str(tmp_path / "q"),
            backbone="resnet18",
            epochs=1,
            feature_cache=str(cache_dir),
            device="cpu",
        )


def test_pretrain_notes_a_cache_of_another_precision(
    cache_dir, scenes, teacher_run, tmp_path, capsys
):
    """A cache encoded in bf16 (as on a GPU; here the fp32 one relabelled) read by an fp32
    run: pretrain says so. The cache's own precision: no note."""
    import shutil

    gpu_built = tmp_path / "bf16cache"
    shutil.copytree(cache_dir, gpu_built)
    meta = json.loads((gpu_built / "meta.json").read_text())
    (gpu_built / "meta.json").write_text(json.dumps(meta | {"precision": "bf16"}))
    common = dict(data=str(scenes), teacher=str(teacher_run), splits=["train", "val"])
    common |= dict(backbone="resnet18", max_steps=1, batch_size=4, device="cpu")
    dt.pretrain(out=str(tmp_path / "a"), feature_cache=str(gpu_built), **common)
    assert "was encoded in bf16, this run computes in fp32" in capsys.readouterr().out
    dt.pretrain(out=str(tmp_path / "b"), feature_cache=str(cache_dir), **common)
    assert "was encoded in" not in capsys.readouterr().out


def test_cache_compile_teacher_reaches_the_teacher(scenes, tmp_path):
    """compile_teacher=true is handed to the teacher: an NCSN++-style UNet (read through
    hooks) is refused with the fix, before the cache folder is made."""
    from tests.teachers.test_contract import _skip_unet

    _skip_unet().save_pretrained(tmp_path / "ncsnpp")
    with pytest.raises(UserError, match="compile_teacher=false"):
        dt.api.cache_features(
            data=str(scenes),
            teacher=str(tmp_path / "ncsnpp"),
            out=str(tmp_path / "c"),
            image_size=[32, 32],
            compile_teacher=True,
            device="cpu",
        )
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_reading_the_whole_cache_keeps_rss_flat(tmp_path):
    """24 MiB of cache read end to end: the reader's resident memory grows by less than half
    of that (pages read through a memory map would all count as resident)."""
    levels = [(64, 32, 32), (128, 16, 16)]  # 192 KiB per draw, 64 x 2 draws = 24 MiB
    path = random_cache(tmp_path / "c", 64, 2, levels)
    ref = [np.load(path / f"level{lvl}.npy") for lvl in range(2)]
    cache = FeatureCache(path)
    cache.read(0, 0)
    before = _rss_kb()
    for i in range(64):
        for j in range(2):
            got = cache.read(i, j)
            if i % 9 == 0:  # the positioned reads return the right blocks
                assert all(np.array_equal(g, r[i, j]) for g, r in zip(got, ref, strict=True))
    grown = _rss_kb() - before  # (ref was loaded before `before`)
    assert grown < 12 * 1024, f"RSS grew by {grown} KiB"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_building_the_cache_keeps_rss_flat(teacher_run, tmp_path):
    """cache-features writes 26 MB of targets; its resident memory peaks less than half of
    that above where it stood after encoding one batch (pages written through a memory map
    would all count as resident until the end)."""
    from dreamteacher.data.synthetic import make_scenes
    from dreamteacher.teachers.cache import build_cache

    data = unlabeled_images(make_scenes(tmp_path / "d", n=480, image_size=(32, 32)), [32, 32])
    teacher = load_teacher(teacher_run)
    teacher(torch.stack([data[i] for i in range(48)]), list(range(48)))  # allocator warmed up
    before, peak = _rss_kb(), [0]

    def sample_rss(loader):  # as `progress`: RSS before each batch and after the last
        for x in loader:
            peak[0] = max(peak[0], _rss_kb())
            yield x
        peak[0] = max(peak[0], _rss_kb())

    path = build_cache(teacher, data, tmp_path / "c", draws=4, batch_size=48, progress=sample_rss)
    meta = json.loads((path / "meta.json").read_text())
    written = sum(f.stat().st_size for f in path.glob("level*.npy"))
    assert written > 480 * meta["bytes_per_image"] > 24 * 2**20
    grown = peak[0] - before
    assert grown < written / 2 / 1024, f"RSS grew by {grown} KiB while writing {written} bytes"
    x = data[479].unsqueeze(0).flip(-1)  # the last batch's last block landed where it belongs
    ref = teacher(x, [mix(0, 99991, 479, 3)])
    for lvl in range(4):
        got = torch.from_numpy(np.load(path / f"level{lvl}.npy", mmap_mode="r")[479, 3].copy())
        assert torch.allclose(got.float(), ref[lvl][0], atol=2e-2 * ref[lvl].abs().max().item())


def test_broken_cache_files_are_named(tmp_path):
    path = random_cache(tmp_path / "c", 4, 2, [(8, 4, 4)])
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(meta | {"draws": 3}))
    with pytest.raises(UserError, match=r"level0.npy holds float16 \(4, 2, 8, 4, 4\).*rebuild"):
        FeatureCache(path)
    (path / "meta.json").write_text(json.dumps(meta))
    whole = (path / "level0.npy").read_bytes()
    (path / "level0.npy").write_bytes(whole[:-2])  # one value short
    with pytest.raises(UserError, match="level0.npy is truncated; rebuild"):
        FeatureCache(path)
    (path / "level0.npy").write_bytes(whole)
    FeatureCache(path)  # whole again: opens
    (path / "level0.npy").write_bytes(b"not an array")
    with pytest.raises(UserError, match="level0.npy cannot be read.*rebuild"):
        FeatureCache(path)


def _read_in_child(cache, i, j, q):
    q.put([a.sum(dtype=np.float64) for a in cache.read(i, j)])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork")
def test_a_forked_reader_opens_its_own_files(tmp_path):
    """A DataLoader worker forked after the parent has read gets its own file offsets: a
    shared offset would let concurrent reads land on each other's blocks."""
    import multiprocessing as mp

    path = random_cache(tmp_path / "c", 8, 2, [(8, 16, 16)])
    cache = FeatureCache(path)
    cache.read(0, 0)
    parent_file = cache._files[0]
    at = parent_file.tell()
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(cache, 7, 1, q))
    child.start()
    sums = q.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert parent_file.tell() == at  # the child's reads did not move the parent's offset
    assert sums == [a.sum(dtype=np.float64) for a in cache.read(7, 1)]
