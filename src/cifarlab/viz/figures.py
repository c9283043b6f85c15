"""The stage's pictures as matplotlib figures (Agg, no display), one function per picture.

Figures are built with `matplotlib.figure.Figure` directly rather than pyplot, so nothing
accumulates in pyplot's global figure list across a run and no GUI backend is ever asked
for; the same Figure is saved as a PNG and logged to TensorBoard (add_figure).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg", force=True)  # torch's add_figure imports pyplot: keep it off any display

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from cifarlab.viz.cam import box

DPI = 110
#: A box is drawn around the largest connected region of a class map above this share of its peak.
BOX_FRACTION = 0.2


def save(fig: Figure, path: Path) -> None:
    """PNG without a timestamp in its metadata, so unchanged pictures are unchanged files."""
    fig.savefig(path, dpi=DPI, metadata={"Software": None})


def read_history(path: Path) -> dict[str, list[float]]:
    with open(path, newline="", encoding="utf-8") as f:
        return history_columns(list(csv.DictReader(f)))


def history_columns(rows: list[dict]) -> dict[str, list[float]]:
    """Per-epoch rows (history.csv's, or the model file's) as one list per column."""
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}


def training_curves(history: dict[str, list[float]]) -> Figure:
    """Loss, accuracy and learning rate per epoch (the history the model file carries)."""
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    epoch = history.get("epoch", [])
    for ax, metric, title in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        for split, style in (("train", "-o"), ("valid", "-s")):
            key = f"{split}_{metric}"
            if key in history:
                ax.plot(epoch, history[key], style, ms=3, label=split)
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    for key in sorted(k for k in history if k.startswith("lr_")):
        ax_lr.plot(epoch, history[key], "-o", ms=3, label=f"group {key[3:]}")
    ax_lr.set(title="learning rate (end of epoch)", xlabel="epoch")
    ax_lr.grid(alpha=0.3)
    ax_lr.legend()
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _confusion_axes(fig: Figure, ax, counts, classes: list[str], title: str) -> None:
    cm = np.asarray(counts, dtype=np.int64)
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    k = len(classes)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the actual class")
    ax.set_xticks(range(k), classes, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="actual", title=f"{title}: {int(np.trace(cm))} of {int(cm.sum())} right")
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=8 if k <= 12 else 6,
                color="white" if share[i, j] > 0.5 else "black",
            )


def confusion_matrix(counts: list[list[int]], classes: list[str]) -> Figure:
    """Counts in the cells, colours by share of each actual class (rows sum to 1)."""
    size = max(5.0, 0.6 * len(classes) + 2)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    _confusion_axes(fig, fig.subplots(), counts, classes, "confusion matrix")
    return fig


def confusion_splits(matrices: dict[str, list[list[int]]], classes: list[str]) -> Figure:
    """One confusion matrix per split, side by side (train, valid, test): over- or underfitting at a glance."""
    size = max(5.0, 0.6 * len(classes) + 2)
    fig = Figure(figsize=((size + 1) * len(matrices), size), layout="constrained")
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    for ax, (split, counts) in zip(axes, matrices.items()):
        _confusion_axes(fig, ax, counts, classes, split)
    return fig


def layer_heatmaps(rows: list[dict]) -> Figure:
    """reports/train/layers.csv as two heat maps, layers (input at the top) by epochs (0: the
    initialization): log10 of each layer's activation std and of the gradient norm at its output."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    if not rows:
        for ax in axes:
            ax.axis("off")
        fig.suptitle("no per-layer diagnostics: the model was trained with train.diagnostics off")
        return fig
    epochs = sorted({int(r["epoch"]) for r in rows})
    layers = [
        r["layer"] for r in sorted((r for r in rows if int(r["epoch"]) == epochs[0]), key=lambda r: int(r["depth"]))
    ]
    for ax, key, label in (
        (axes[0], "activation_std", "log10 std of the layer's output"),
        (axes[1], "gradient_norm", "log10 norm of the gradient at its output"),
    ):
        grid = np.full((len(layers), len(epochs)), np.nan)
        for r in rows:
            if r["layer"] in layers:
                v = float(r[key])
                grid[layers.index(r["layer"]), epochs.index(int(r["epoch"]))] = np.log10(v) if v > 0 else np.nan
        im = ax.imshow(grid, aspect="auto", cmap="magma", interpolation="nearest")
        fig.colorbar(im, ax=ax, label=label)
        ax.set_yticks(range(len(layers)), layers, fontsize=7 if len(layers) <= 24 else 5)
        ax.set_xticks(range(len(epochs)), [str(e) for e in epochs], fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
        ax.set(xlabel="epoch (0: at initialization)", ylabel="layer (input to output)", title=key.replace("_", " "))
    return fig


def per_class(report: dict) -> Figure:
    """Precision and recall of every class side by side (reports/eval/report.json)."""
    pc = report["per_class"]
    classes = list(pc)
    x = np.arange(len(classes))
    fig = Figure(figsize=(max(7, 0.8 * len(classes) + 2), 4), layout="constrained")
    ax = fig.subplots()
    for offset, key in ((-0.2, "precision"), (0.2, "recall")):
        bars = ax.bar(x + offset, [pc[c][key] for c in classes], width=0.4, label=key)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, classes, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_ylim(0, 1.18)
    acc = report.get("accuracy")
    ax.set_title("per-class precision and recall" + (f" (test accuracy {acc:.3f})" if acc is not None else ""))
    ax.legend(loc="upper right", ncols=2, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _hwc(img: torch.Tensor) -> np.ndarray:
    img = img.detach().float().cpu()
    return img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy()


def image_grid(grid: torch.Tensor, title: str, xlabel: Optional[str] = None, ylabel: Optional[str] = None) -> Figure:
    """A make_grid tensor [3, H, W] in 0..1, sized so that tiny kernel tiles stay visible."""
    h, w = grid.shape[-2:]
    inch = min(0.12, max(0.012, 7.0 / max(h, w)))  # inches per grid pixel
    fig = Figure(figsize=(max(4.5, w * inch + 0.8), h * inch + 1.0), layout="constrained")
    ax = fig.subplots()
    ax.imshow(_hwc(grid), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_xlabel(xlabel or "", fontsize=8)
    ax.set_ylabel(ylabel or "", fontsize=8)
    return fig


def _tiles(rows: int, fig: Figure) -> dict:
    """A fixed grid for many small image axes: constrained layout would measure every title."""
    h = fig.get_figheight()
    return dict(left=0.01, right=0.99, bottom=0.01, top=1 - 0.8 / h, wspace=0.05, hspace=0.45)


def _suptitle(fig: Figure, text: str) -> None:
    fig.suptitle(text, fontsize=10, y=1 - 0.12 / fig.get_figheight(), va="top")


def feature_maps(
    images: torch.Tensor,
    maps: dict[str, torch.Tensor],
    captions: list[str],
    channels: int,
    *,
    title: str = "feature maps (forward hooks)",
) -> Figure:
    """Per layer and image: the input, then its first `channels` feature maps, each scaled on its own."""
    n = images.shape[0]
    rows = len(maps) * n
    cols = 1 + channels
    fig = Figure(figsize=(1.15 * cols, 1.3 * rows + 0.8))
    axes = fig.subplots(rows, cols, squeeze=False, gridspec_kw=_tiles(rows, fig))
    for block, (layer, m) in enumerate(maps.items()):
        for i in range(n):
            r = block * n + i
            axes[r, 0].imshow(_hwc(images[i]), interpolation="nearest")
            axes[r, 0].set_title(f"{layer} {tuple(m.shape[1:])}\n{captions[i]}", fontsize=6)
            for c in range(channels):
                ax = axes[r, 1 + c]
                if c < m.shape[1]:
                    ax.imshow(m[i, c].numpy(), cmap="viridis", interpolation="nearest")
                    ax.set_title(f"ch {c}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")  # no ticks: also keeps the layout pass fast with many small axes
    _suptitle(fig, title)
    return fig


def _sample(values: torch.Tensor, limit: int = 1_000_000) -> np.ndarray:
    v = values.detach().float().flatten().cpu()
    if v.numel() > limit:
        v = v[torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[:limit]]
    return v.numpy()


def distributions(tensors: dict[str, torch.Tensor], title: str, magnitude: bool = False) -> Figure:
    """Left: histograms of the first, middle and last tensors; right: percentiles of every one by depth.

    Works for any depth: a 60-layer net gets 60 points on the right, not 60 subplots. With
    `magnitude` (gradients) the right side shows |value| on a log scale, where vanishing or
    exploding gradients show up as a slope across the layers.
    """
    names = list(tensors)
    fig = Figure(figsize=(14, 4.5), layout="constrained")
    ax_h, ax_p = fig.subplots(1, 2, width_ratios=[1, 1.6])
    if not names:
        ax_h.set_title(f"{title}: nothing to show")
        return fig
    picks = sorted({0, len(names) // 2, len(names) - 1})
    for i in picks:
        v = _sample(tensors[names[i]])
        ax_h.hist(v, bins=60, histtype="step", density=True, label=f"{names[i]} ({tensors[names[i]].numel():,})")
    ax_h.set(title=f"{title}: histograms", xlabel="value", ylabel="density")
    ax_h.legend(fontsize=7)
    values = [np.abs(_sample(tensors[n])) if magnitude else _sample(tensors[n]) for n in names]
    q = np.array([np.percentile(v, [1, 25, 50, 75, 99]) for v in values])
    if magnitude:  # a log axis has no 0: show exact zeros at the smallest positive value
        positive = q[q > 0]
        q = np.maximum(q, positive.min() if positive.size else 1e-12)
    x = np.arange(len(names))
    ax_p.fill_between(x, q[:, 0], q[:, 4], alpha=0.2, label="1-99 %")
    ax_p.fill_between(x, q[:, 1], q[:, 3], alpha=0.4, label="25-75 %")
    ax_p.plot(x, q[:, 2], "-o", ms=3, label="median")
    if magnitude:
        ax_p.set_yscale("log")
    step = max(1, math.ceil(len(names) / 40))
    ax_p.set_xticks(x[::step], [names[i] for i in x[::step]], rotation=90, fontsize=6)
    ax_p.set(title=f"{title} per tensor{' (|value|)' if magnitude else ''}, input to output")
    ax_p.grid(alpha=0.3)
    ax_p.legend(fontsize=7)
    return fig


def grad_cam(
    images: torch.Tensor,
    columns: list[tuple[str, torch.Tensor, list[str]]],
    captions: list[str],
    layer: str,
    *,
    boxes: bool = True,
) -> Figure:
    """Each image, then one overlay per column (name, maps [N, H, W], per-image titles); with
    `boxes`, a rectangle around each map's largest region above BOX_FRACTION of its peak."""
    n = images.shape[0]
    cols = 1 + len(columns)
    fig = Figure(figsize=(2.2 * cols, 2.4 * n + 0.8))
    axes = fig.subplots(n, cols, squeeze=False, gridspec_kw=_tiles(n, fig))
    for i in range(n):
        img = _hwc(images[i])
        axes[i, 0].imshow(img, interpolation="nearest")
        axes[i, 0].set_title(captions[i], fontsize=8)
        for j, (_name, maps, titles) in enumerate(columns, start=1):
            axes[i, j].imshow(img, interpolation="nearest")
            axes[i, j].imshow(maps[i].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
            axes[i, j].set_title(titles[i], fontsize=8)
            b = box(maps[i], BOX_FRACTION) if boxes else None
            if b is not None:
                x0, y0, x1, y1 = b
                axes[i, j].add_patch(
                    Rectangle(
                        (x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, edgecolor="white", linewidth=1.5
                    )
                )
    for ax in axes.flat:
        ax.axis("off")
    _suptitle(
        fig,
        f"{layer}\n"
        + ", ".join(name for name, _, _ in columns)
        + (f"\nboxes: the largest region above {BOX_FRACTION:.0%} of each map's peak" if boxes else ""),
    )
    return fig


def caption(true: int, pred: Optional[int], prob: Optional[float], classes: list[str]) -> str:
    if pred is None:
        return classes[true]
    mark = "right" if pred == true else "wrong"
    return f"{classes[true]} -> {classes[pred]} ({prob:.2f}, {mark})"
