"""Figures of images for the lessons: galleries, preprocessing steps, masks (metric plots live in evaluation)."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def new_figure(**kwargs) -> Figure:
    """A figure that shows in a notebook when returned, but is not kept open by pyplot.

    Creating it through pyplot activates the notebook's inline backend (so the figure renders
    as an image); closing it at once keeps scripts and long runs from piling up open figures.
    """
    fig = plt.figure(layout="constrained", **kwargs)
    plt.close(fig)
    return fig


def _show(ax, image: np.ndarray, title: str = "") -> None:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 3:
        low, high = float(image.min()), float(image.max())
        image = (image - low) / (high - low) if high > low else np.zeros_like(image)
        ax.imshow(image)
    else:
        ax.imshow(np.squeeze(image), cmap="gray")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


IMAGE_DPI = 72  # galleries are for looking, not printing: keeps notebooks light


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, *, ncols: int = 4,
               size: float = 2.0) -> Figure:
    """A grid of images (grey or RGB) with optional titles."""
    count = len(images)
    nrows = max(1, int(np.ceil(count / ncols)))
    fig = new_figure(figsize=(size * ncols, size * nrows), dpi=IMAGE_DPI)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for i, ax in enumerate(axes):
        if i < count:
            _show(ax, images[i], titles[i] if titles else "")
        else:
            ax.axis("off")
    return fig


def steps_figure(steps: Sequence[tuple[str, np.ndarray]], *, ncols: int = 4) -> Figure:
    """Each preprocessing step's output, in order, titled with the step's name."""
    return image_grid([image for _, image in steps], [f"{i}. {name}" for i, (name, _) in enumerate(steps, 1)],
                      ncols=ncols)


def mask_overlay(image: np.ndarray, mask: np.ndarray, *, title: str = "") -> Figure:
    """An image with a mask's outline drawn over it."""
    fig = new_figure(figsize=(4, 4), dpi=IMAGE_DPI)
    ax = fig.subplots()
    _show(ax, image, title)
    ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors="red", linewidths=1)
    return fig


def _show_in_range(ax, image: np.ndarray, low: float, high: float, title: str = "") -> None:
    """Like ``_show`` but with a fixed display range, so brightness changes stay visible."""
    image = np.asarray(image, dtype=np.float32)
    scaled = np.clip((image - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(image)
    first = scaled if scaled.ndim == 2 else scaled[..., 0]
    colour = scaled.ndim == 3 and scaled.shape[-1] == 3 and not (
        np.array_equal(first, scaled[..., 1]) and np.array_equal(first, scaled[..., 2]))
    if colour:
        ax.imshow(scaled)
    else:
        ax.imshow(first, cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def augmentation_grid(rows: dict[str, np.ndarray], *, title: str = "", size: float = 1.0) -> Figure:
    """One row per source: its original image first, then its augmented versions.

    ``rows`` maps a row label to an array ``(K, H, W, C)`` whose first image is the original (as
    :func:`helpers.augmentation.variants` returns). Each row is shown in its original's value
    range, so brightness and contrast changes are visible.
    """
    ncols = max(len(images) for images in rows.values())
    fig = new_figure(figsize=(size * ncols, size * len(rows) + (0.3 if title else 0)), dpi=IMAGE_DPI)
    axes = np.atleast_2d(fig.subplots(len(rows), ncols))
    for r, (label, images) in enumerate(rows.items()):
        low, high = float(np.min(images[0])), float(np.max(images[0]))
        for c, ax in enumerate(axes[r]):
            if c < len(images):
                _show_in_range(ax, images[c], low, high, f"{label}: original" if c == 0 else f"#{c}")
            else:
                ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
