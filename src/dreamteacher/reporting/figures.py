"""The report's figures, drawn with matplotlib (Agg) and returned as PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def lines(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
) -> bytes:
    """One line per named (x, y) series."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name, linewidth=1.2)
    if log_y and all(v > 0 for _, y in series.values() for v in y):
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8, ncol=2 if len(series) > 4 else 1)
    return _png(fig)


def iou_bars(per_class: dict[str, float | None]) -> bytes:
    """Horizontal bars of per-class IoU (%); a class absent from the split is marked."""
    plt = _plt()
    names = list(per_class)
    vals = [v if v is not None else 0.0 for v in per_class.values()]
    fig, ax = plt.subplots(figsize=(6.4, 0.3 * len(names) + 1))
    bars = ax.barh(range(len(names)), vals, color="#4c78a8")
    for b, v in zip(bars, per_class.values(), strict=True):
        ax.text(
            b.get_width() + 0.5,
            b.get_y() + b.get_height() / 2,
            "absent" if v is None else f"{v:.1f}",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("IoU (%)")
    return _png(fig)


def confusion(cm: np.ndarray, names: list[str]) -> bytes:
    """The confusion matrix, each row (true class) normalised to 1."""
    plt = _plt()
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(names)
    fig, ax = plt.subplots(figsize=(0.45 * k + 2.5, 0.45 * k + 2))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if rows[i, j] >= 0.01:
                color = "white" if rows[i, j] > 0.6 else "black"
                ax.text(
                    j, i, f"{rows[i, j]:.2f}", ha="center", va="center", fontsize=6, color=color
                )
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _png(fig)


def palette(k: int) -> np.ndarray:
    """k distinct colours (# k, 3 in [0, 1])."""
    plt = _plt()
    cmap = plt.get_cmap("tab20")
    return np.array([cmap(i % 20)[:3] for i in range(k)])


def _overlay(mask: np.ndarray, k: int, ignore_index: int) -> np.ndarray:
    """# H, W class ids -> # H, W, 4 RGBA, the ignored pixels transparent."""
    colours = palette(k)
    rgba = np.zeros((*mask.shape, 4))
    valid = (mask >= 0) & (mask < k) & (mask != ignore_index)
    rgba[valid, :3] = colours[mask[valid]]
    rgba[valid, 3] = 0.55
    return rgba


def segmentation_examples(
    images: np.ndarray, truth: np.ndarray, pred: np.ndarray, names: list[str], ignore_index: int
) -> bytes:
    """A row per image: the image, ground truth over it, prediction over it. images # E, h, w,
    3 uint8; truth, pred # E, H, W class ids (any resolution: drawn over the image's extent)."""
    plt = _plt()
    e, k = len(images), len(names)
    fig, axes = plt.subplots(
        e, 3, figsize=(9, 2.6 * e * images.shape[1] / images.shape[2] + 0.6), squeeze=False
    )
    extent = (0, images.shape[2], images.shape[1], 0)
    for r in range(e):
        for c, (title, mask) in enumerate(
            (("image", None), ("ground truth", truth[r]), ("prediction", pred[r]))
        ):
            ax = axes[r][c]
            ax.imshow(images[r], extent=extent)
            if mask is not None:
                ax.imshow(_overlay(mask, k, ignore_index), extent=extent, interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title, fontsize=9)
    colours = palette(k)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[i]) for i in range(k)]
    fig.legend(
        handles,
        names,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(k, 6),
        fontsize=7,
        frameon=False,
    )
    return _png(fig)


def feature_pca(
    images: np.ndarray, levels: list[dict[str, Any]], left: str = "teacher", right: str = "student"
) -> bytes:
    """A row per image: the image, then for each level the PCA colours of `left` and `right`
    side by side. levels: [{"stride", left: # E, h, w, 3 uint8, right: ...}]."""
    plt = _plt()
    e = len(images)
    cols = 1 + 2 * len(levels)
    aspect = images.shape[1] / images.shape[2]
    fig, axes = plt.subplots(e, cols, figsize=(1.7 * cols, 1.7 * aspect * e + 0.5), squeeze=False)
    for r in range(e):
        axes[r][0].imshow(images[r])
        if r == 0:
            axes[r][0].set_title("image", fontsize=8)
        for i, lv in enumerate(levels):
            for j, side in enumerate((left, right)):
                ax = axes[r][1 + 2 * i + j]
                ax.imshow(lv[side][r], interpolation="nearest")
                if r == 0:
                    ax.set_title(f"{side} /{lv['stride']}", fontsize=8)
        for ax in axes[r]:
            ax.set_axis_off()
    return _png(fig)
