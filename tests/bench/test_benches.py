"""The benchmark scripts run end to end at tiny sizes and report consistent figures."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(script, *args):
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _check_throughput(r, stdout):
    """The figures of `throughput.py --quick --compile --compile-backend aot_eager` (run by
    test_gpu_script_tiny_mode, whose gpu.log holds its stdout) follow from its timings."""
    s = r["seconds_per_batch"]
    assert all(v > 0 for v in s.values())
    assert abs(r["overhead_ratio"] - s["step"] / (s["teacher"] + s["student"])) < 1e-9
    assert abs(r["images_per_s"]["step"] - r["settings"]["batch"] / s["step"]) < 1e-6
    assert "overhead ratio" in stdout
    # the feature cache's step against the step timed in the same rounds of their own
    c = r["cache"]
    cs = c["seconds_per_batch"]
    assert set(cs) == {"step", "data", "step_cached"} and all(v > 0 for v in cs.values())
    assert abs(c["speedup"] - cs["step"] / cs["step_cached"]) < 1e-9 and c["bytes_per_image"] > 0
    # the compiled teacher and step (teacher and student both compiled) timed the same way
    k = r["compiled"]
    assert k["backend"] == "aot_eager" and all(v > 0 for v in k["compile_s"].values())
    for part in ("teacher", "step"):  # against the eager part timed in the same rounds
        e = k["eager_seconds_per_batch"][part]
        assert abs(k["speedup"][part] - e / k["seconds_per_batch"][part]) < 1e-9
    # the eager figures are written (and printed) before compiling starts, then again with
    # the compiled ones: a run stopped while compiling keeps them
    first, second, third = stdout.split("device:")[1:]
    assert "overhead ratio" in first and "feature cache" not in first
    assert "feature cache: step" in second and "compiled" not in second
    assert "compiled teacher" in third


def test_throughput_keeps_eager_figures_when_compile_fails(tmp_path):
    """A compiler that fails (here an unknown backend) is recorded, not fatal: gpu.sh's one
    GPU run still gets the eager figures."""
    out = tmp_path / "t.json"
    p = _run("throughput.py", "--quick", "--device", "cpu", "--compile", "--compile-backend",
             "no_such_backend", "--out", out)  # fmt: skip
    r = json.loads(out.read_text())
    assert "no_such_backend" in r["compiled"]["error"] and "images_per_s" not in r["compiled"]
    assert r["seconds_per_batch"]["step"] > 0 and "failed" in p.stdout


def test_throughput_keeps_other_figures_when_the_cache_part_fails(monkeypatch):
    """A feature-cache part that fails (simulated: the disk is full while the cache is
    written) is recorded, not fatal; the step's figures stay."""
    import errno
    import importlib.util

    import dreamteacher.teachers.cache as cache_mod

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod, "build_cache", full_disk)
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "bench" / "throughput.py")
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    seen = []
    r = throughput.run("cpu", quick=True, on_result=lambda res: seen.append(dict(res)))
    assert "No space left" in r["cache"]["error"] and "speedup" not in r["cache"]
    assert r["seconds_per_batch"]["step"] > 0 and r["overhead_ratio"] > 0
    assert [("cache" in x) for x in seen] == [False, True]  # written before and after
    assert "feature cache part failed" in throughput.format_result(r)


def test_logit_head_bench(tmp_path):
    """The logit-head bench at tiny sizes: one timing per mode and head, its ratios from its
    timings, and the heads' MACs counted on the decoder's maps (the light head far fewer)."""
    out = tmp_path / "h.json"
    p = _run("logit_head.py", "--quick", "--device", "cpu", "--out", out)
    r = json.loads(out.read_text())
    s = r["seconds_per_batch"]
    assert list(s) == ["feature", "mix-uper", "mix-light", "label-uper", "label-light"]
    for k, v in s.items():
        assert v > 0 and abs(r["ratio_to_feature"][k] - v / s["feature"]) < 1e-9
        assert abs(r["images_per_s"][k] - r["settings"]["batch"] / v) < 1e-6
    m = r["head_macs_per_image"]
    # 32x32: P2 8x8 (the 3x3 fusion over 4 x 256 channels and the 1x1 to 5 classes), P3..P5
    assert m["uper"] == 8 * 8 * (9 * 1024 * 256 + 256 * 5)
    assert m["light"] == 256 * 256 * (64 + 16 + 4 + 1) + 8 * 8 * 256 * 5
    assert "logit head MACs per image" in p.stdout


def test_decode_memo_bench(tmp_path):
    """The decode-memo bench at tiny sizes: the memo keeps every image (and mask) it read as
    uint8, the plain datasets keep nothing, and the fine-tunings with and without it score the
    same mIoU (the memo returns the same bits)."""
    out = tmp_path / "m.json"
    p = _run("decode_memo.py", "--quick", "--out", out)
    r = json.loads(out.read_text())
    h, w = r["settings"]["image_size"]
    reads = r["reads"]
    assert reads["labelled_memo"]["memo_bytes"] == reads["labelled_memo"]["items"] * h * w * 4
    assert reads["unlabeled_memo"]["memo_bytes"] == reads["unlabeled_memo"]["items"] * h * w * 3
    assert reads["labelled_no_memo"]["memo_bytes"] == reads["unlabeled_no_memo"]["memo_bytes"] == 0
    f = r["finetune"]
    assert f["same_miou"] and len({x["miou"] for v in f["runs"].values() for x in v}) == 1
    for k, m in (("speedup", "median_wall_s"), ("cpu_speedup", "median_cpu_s")):
        assert f[m]["memo"] > 0 and abs(f[k] - f[m]["no_memo"] / f[m]["memo"]) < 1e-9
    assert "same mIoU: True" in p.stdout


def test_cache_read_bench(tmp_path):
    """The cache-read bench at small sizes: its sizes follow from the levels, its rates from
    its timings, and reading its 25 MB cache end to end leaves the reader's RSS flat."""
    out = tmp_path / "c.json"
    p = _run("cache_read.py", "--images", 64, "--levels", "64x32x32", "128x16x16", "--batch", 8,
             "--workers", 0, 1, "--rounds", 3, "--dir", tmp_path, "--out", out)  # fmt: skip
    r = json.loads(out.read_text())
    per_draw = (64 * 32 * 32 + 128 * 16 * 16) * 2  # bytes of fp16
    assert abs(r["cache_mb"] - 64 * 2 * per_draw / 1e6) < 1e-9
    assert abs(r["batch_mb"] - 8 * per_draw / 1e6) < 1e-9
    assert set(r["seconds_per_batch"]) == {"0", "1"}
    assert set(r["full_pass_mb_per_s"]) == {"cold", "warm"}
    assert all(v > 0 for v in r["full_pass_mb_per_s"].values())
    assert r["page_cache_dropped"] == sys.platform.startswith("linux")
    assert "one pass over the cache: cold" in p.stdout
    for k, v in r["seconds_per_batch"].items():
        assert v > 0 and abs(r["batch_mb_per_s"][k] - r["batch_mb"] / v) < 1e-6
    if sys.platform.startswith("linux"):
        grown = r["rss_mb"]["after"] - r["rss_mb"]["before"]
        assert grown < 0.5 * r["cache_mb"], grown
    assert "RSS reading the whole cache" in p.stdout
    assert not list(tmp_path.glob("tmp*"))  # the temporary cache is removed


def test_memory_with_a_feature_cache(tmp_path):
    """--feature-cache K: cache-features runs first (its own peak RSS, time, bytes written)
    and pretrain reads its targets from that cache, here in a loader worker, whose peak RSS
    is reported too (the worker reads the cache; the main process alone would miss it)."""
    out = tmp_path / "m.json"
    _run(
        "memory.py",
        *("--sizes", 40, 400, "--steps", 3, "--feature-cache", 2),
        "--out",
        out,
        "--workers",
        1,
    )
    small, large = json.loads(out.read_text())
    for r in (small, large):
        assert r["cache_draws"] == 2 and r["feature_cache_read"] and r["cache_s"] > 0
        assert 100 < r["cache_peak_rss_mb"] < 8000
        assert r["num_workers"] == 1 and 50 < r["worker_peak_rss_mb"] < 8000
    assert large["worker_peak_rss_mb"] < 1.25 * small["worker_peak_rss_mb"]
    # 2 encodings of 4 levels per image, plus the same .npy headers and meta.json
    assert 9.5 < large["cache_mb"] / small["cache_mb"] < 10.05
    assert large["cache_peak_rss_mb"] < 1.25 * small["cache_peak_rss_mb"]
    assert large["peak_rss_mb"] < 1.25 * small["peak_rss_mb"]


def _gpu_sh(out, timeout, cwd=None, **env):
    """bench/gpu.sh OUT tiny, with extra environment variables."""
    env = dict(os.environ, PYTHON=sys.executable, **env)
    cmd = ["bash", str(ROOT / "bench" / "gpu.sh"), str(out), "tiny"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def test_gpu_script_tiny_mode(tmp_path):
    """bench/gpu.sh runs every command it would run on a GPU (throughput bench, with
    torch.compile as COMPILE=1 asks, benchmark, memory against dataset size), at tiny sizes
    on the CPU, and collects their outputs in one folder; each command's figures are
    checked here: no other test checks the throughput or online memory figures."""
    p = _gpu_sh(tmp_path / "g", 900, COMPILE="1")
    assert p.returncode == 0, p.stderr[-3000:]
    g = tmp_path / "g"
    res = json.loads((g / "results.json").read_text())
    assert res["complete"] and res["config"]["profile"] == "smoke"
    assert {r["method"] for r in res["runs"]} == {"scratch", "dreamteacher", "simclr"}
    # method by method (all of scratch, then dreamteacher, ...): a run stopped by the budget
    # keeps whole rows for the first methods
    order = [r["method"] for r in res["runs"]]
    assert order == sorted(order, key=["scratch", "dreamteacher", "simclr"].index)
    assert {r["protocol"] for r in res["runs"]} == {"finetune", "frozen"}
    assert all(0 <= r["miou"] <= 100 for r in res["runs"])
    assert (g / "miou_vs_labels.png").exists() and "**frozen**" in (g / "results.md").read_text()
    log = (g / "gpu.log").read_text()
    # the throughput bench, with torch.compile's aot_eager backend: its stdout is in gpu.log
    printed = log.split("throughput (cpu)")[1].split("] benchmark --profile")[0]
    _check_throughput(json.loads((g / "throughput.json").read_text()), printed)
    # memory against dataset size, encoding online (bench/memory.py --sizes 40 400 --steps 3)
    small, large = json.loads((g / "memory.json").read_text())
    assert small["images"] == 40 and large["images"] == 400
    assert small["device"] == "cpu" and "peak_gpu_allocated_mb" not in small
    assert 100 < small["peak_rss_mb"] < 8000
    assert large["peak_rss_mb"] < 1.25 * small["peak_rss_mb"]
    assert not small["feature_cache_read"] and "cache_peak_rss_mb" not in small
    assert small["worker_peak_rss_mb"] == 0  # no loader workers on the CPU by default
    # the two parts the check is for first, memory in what is left
    stages = ("throughput (cpu)", "benchmark --profile smoke", "memory against", "(rc=0)")
    where = [log.find(x) for x in stages]
    assert -1 not in where and where == sorted(where), log
    assert "budget" not in log


def test_gpu_script_stops_at_its_budget(tmp_path):
    """With BUDGET seconds spent, the running stage is stopped, the later ones are skipped,
    the script exits non-zero and says so in gpu.log."""
    t = time.time()
    p = _gpu_sh(tmp_path / "g", 120, BUDGET="6", COMPILE="1")  # compiling outlasts 6 s
    took = time.time() - t
    assert p.returncode == 1
    log = (tmp_path / "g" / "gpu.log").read_text()
    assert "stopped at the 6 s budget" in log
    assert log.count("skipped: the 6 s budget is spent") == 2
    assert "(rc=1)" in log and took < 6 + 25  # + data generation and the kill grace


def test_gpu_script_caps_its_stages(tmp_path):
    """THROUGHPUT_S, BENCHMARK_S and MEMORY_S cap their stages (a capped throughput stage
    leaves the benchmark the rest of the budget): each one is stopped at its own cap, in
    the order throughput, benchmark, memory, and none by the budget. OUT is given relative
    to the caller's folder, not the repository's."""
    caps = dict(THROUGHPUT_S="1", BENCHMARK_S="3", MEMORY_S="2")
    p = _gpu_sh("g", 120, cwd=tmp_path, BUDGET="60", **caps)
    assert p.returncode == 1
    log = (tmp_path / "g" / "gpu.log").read_text()
    stops = [x.split("] ")[1] for x in log.splitlines() if "stopped" in x]
    assert stops == [f"stopped at its {n} s cap" for n in (1, 3, 2)], log
    assert "budget" not in log and "(rc=1)" in log
