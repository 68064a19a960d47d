"""Matplotlib figures rendered to inline PNGs (base64 data URIs), so a report is one file."""

from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np
import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    # Labels come from the user's data (class folder names): "$\frac{1}{$" must be text, not mathtext
    # that fails to parse after all the work is done.
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def figure_to_data_uri(fig) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _as_image(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) or (H, W) tensor in [0, 1] -> array imshow understands: grey, RGB or RGBA; other
    channel counts (grey + alpha, multispectral) are drawn as their mean, in grey."""
    a = t.detach().cpu().float().clamp(0, 1).numpy()
    if a.ndim == 3:
        a = a.transpose(1, 2, 0) if a.shape[0] in (3, 4) else a.mean(axis=0)
    return a


def image_grid(rows: Sequence[Sequence[torch.Tensor]], *, row_titles: Sequence[str] = (), col_titles: Sequence[str] = (), scale: float = 1.3) -> str:
    """A grid of images (each (C, H, W) or (H, W) in [0, 1]) as a PNG data URI."""
    plt = _pyplot()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(scale * n_cols, scale * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                img = _as_image(row[j])
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            else:
                ax.axis("off")
            if i == 0 and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=8)
            if j == 0 and i < len(row_titles):
                # Horizontal, so long titles ("class airplane *") do not run into the next row.
                ax.set_ylabel(row_titles[i], fontsize=8, rotation=0, ha="right", va="center")
    return figure_to_data_uri(fig)


def bar_chart(values: Sequence[float], *, labels: Sequence[str], threshold: float | None = None, highlight: Sequence[int] = (), ylabel: str = "", title: str = "") -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(values)), 2.8))
    colors = ["#c0392b" if i in set(highlight) else "#4a77b4" for i in range(len(values))]
    ax.bar(range(len(values)), values, color=colors)
    # Slant the labels when there are many or they are words (CIFAR's "automobile"), so they do not overlap.
    slant = len(values) > 12 or max((len(str(label)) for label in labels), default=0) > 3
    ax.set_xticks(range(len(values)), labels, rotation=45 if slant else 0, ha="right" if slant else "center",
                  fontsize=8)
    if threshold is not None:
        ax.axhline(threshold, color="#c0392b", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        ax.legend(fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return figure_to_data_uri(fig)


def line_chart(x: Sequence[float], series: dict[str, Sequence[float]], *, xlabel: str = "", ylabel: str = "", title: str = "", ylim: tuple[float, float] | None = (0, 1.02)) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, ys in series.items():
        ax.plot(list(x)[: len(ys)], list(ys), marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return figure_to_data_uri(fig)
