"""Procedural scenes for the demo and the tests: textured objects of several classes on a
textured background, with occlusion and lighting changes. Deterministic from a seed.

Colour is random per object, so a class is told apart by its shape and texture only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["background", "disk", "box", "triangle", "bar"]


def _texture(kind: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator, scale: float):
    """A [0, 1] texture for one class, period ~ scale pixels, random phase/orientation."""
    ph = rng.uniform(0, 2 * np.pi)
    if kind == 0:  # background: smooth blobs
        a, b = rng.uniform(0.5, 1.5, 2)
        return 0.5 + 0.25 * (np.sin(a * xx / scale + ph) + np.cos(b * yy / scale - ph))
    if kind == 1:  # disk: concentric rings
        cy, cx = rng.uniform(-2, 2, 2)
        r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        return 0.5 + 0.5 * np.sin(2 * np.pi * r / scale + ph)
    if kind == 2:  # box: checkerboard
        return ((np.floor(yy / (scale / 2)) + np.floor(xx / (scale / 2))) % 2).astype(float)
    if kind == 3:  # triangle: diagonal stripes
        th = rng.uniform(0, np.pi)
        return 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * (np.cos(th) * xx + np.sin(th) * yy) / scale))
    # bar: speckle
    return (rng.random(yy.shape) > 0.5).astype(float)


def _shape_mask(kind: int, yy, xx, cy, cx, s, rng) -> np.ndarray:
    if kind == 1:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= s**2
    if kind == 2:
        h, w = s * rng.uniform(0.7, 1.3), s * rng.uniform(0.7, 1.3)
        return (np.abs(yy - cy) <= h) & (np.abs(xx - cx) <= w)
    if kind == 3:  # upward triangle
        top, base = cy - s, cy + s
        half = (yy - top) / (2 * s) * s * 1.2
        return (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half)
    # bar: a long thin rotated rectangle
    th = rng.uniform(0, np.pi)
    u = np.cos(th) * (xx - cx) + np.sin(th) * (yy - cy)
    v = -np.sin(th) * (xx - cx) + np.cos(th) * (yy - cy)
    return (np.abs(u) <= 2.2 * s) & (np.abs(v) <= 0.45 * s)


def render_scene(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (image # H, W, 3 uint8, mask # H, W uint8 class ids)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    scale = max(4.0, min(h, w) / 8)
    img = np.zeros((h, w, 3))
    tex = _texture(0, yy, xx, rng, scale * 2)
    c1, c2 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    img[:] = tex[..., None] * c1 + (1 - tex[..., None]) * c2
    mask = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(3, 7)):  # later objects occlude earlier ones
        kind = int(rng.integers(1, len(CLASSES)))
        s = rng.uniform(0.12, 0.25) * min(h, w)
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        m = _shape_mask(kind, yy, xx, cy, cx, s, rng)
        t = _texture(kind, yy - cy, xx - cx, rng, scale)[..., None]
        a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        col = t * a + (1 - t) * b
        img[m] = col[m]
        mask[m] = kind
    # lighting: a random linear gradient and a global gain, then sensor noise
    gy, gx = rng.uniform(-0.5, 0.5, 2)
    light = rng.uniform(0.7, 1.2) * (1 + gy * (yy / h - 0.5) + gx * (xx / w - 0.5))
    img = img * light[..., None] + rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), mask


def make_scenes(
    out: str | Path,
    n: int = 400,
    image_size: tuple[int, int] | list[int] = (64, 64),
    seed: int = 0,
    splits: dict[str, float] | None = None,
) -> Path:
    """Write a mask-folder dataset of `n` scenes to `out` (images/, masks/, splits.json,
    classes.json). Same seed and size -> the same files."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    h, w = int(image_size[0]), int(image_size[1])
    rng = np.random.default_rng(seed)
    ids = [f"scene_{i:05d}" for i in range(n)]
    for i in ids:
        img, mask = render_scene(h, w, rng)
        Image.fromarray(img).save(out / "images" / f"{i}.png")
        Image.fromarray(mask).save(out / "masks" / f"{i}.png")
    fr = splits or {"train": 0.75, "test": 0.25}
    names, bounds, start = list(fr), {}, 0
    for k, name in enumerate(names):
        end = n if k == len(names) - 1 else start + int(round(fr[name] * n))
        bounds[name] = ids[start:end]
        start = end
    (out / "splits.json").write_text(json.dumps(bounds))
    (out / "classes.json").write_text(json.dumps({"names": CLASSES, "ignore_index": 255}))
    return out
