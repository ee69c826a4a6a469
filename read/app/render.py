"""Pictures for the demo page: every ``[SEG]`` mask in its own colour, the similarity maps with the SasP points, and
the mask files to download.

All images are (H, W, 3) uint8 RGB arrays at the original image size; nothing here knows about the web page.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from read.inference import Prediction
from read.viz import mask_overlay, save_png, similarity_heatmap

# One RGB colour per [SEG] of an answer, in order (the 6th mask takes the 1st colour again).
MASK_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 48, 48),  # red
    (40, 120, 255),  # blue
    (255, 200, 0),  # yellow
    (200, 60, 255),  # violet
    (0, 220, 220),  # cyan
)
COLOUR_NAMES: tuple[str, ...] = ("red", "blue", "yellow", "violet", "cyan")
EDGE_COLOUR = (255, 255, 255)
# Width in pixels of the white bar between two similarity maps.
SEPARATOR = 4


def mask_colour(index: int) -> tuple[int, int, int]:
    """RGB colour of mask ``index`` (0-based)."""
    return MASK_COLOURS[index % len(MASK_COLOURS)]


def colour_name(index: int) -> str:
    """Name of :func:`mask_colour` ``(index)``, for the page's legend."""
    return COLOUR_NAMES[index % len(COLOUR_NAMES)]


def masks_overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Each mask blended into the image in its colour (a later mask covers an earlier one where they overlap), then
    every mask's edge drawn in white, so that a mask stays visible on an object of its own colour.

    Arguments:
        image: (H, W, 3) uint8 RGB.
        masks: (k, H, W) bool; k = 0 gives the image unchanged.
        alpha: weight of a mask's colour inside it.

    Returns:
        (H, W, 3) uint8.
    """
    out = image.copy()
    for j in range(masks.shape[0]):
        out = mask_overlay(out, masks[j], mask_colour(j), alpha)
    for j in range(masks.shape[0]):
        out[mask_edge(masks[j])] = EDGE_COLOUR
    return out


def mask_edge(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` within ``t`` pixels of its outside, ``t = max(1, round(min(H, W) / 256))``; the image
    border counts as inside.

    Arguments:
        mask: (H, W) bool.

    Returns:
        (H, W) bool.
    """
    t = max(1, round(min(mask.shape) / 256))
    inner = cv2.erode(mask.astype(np.uint8), np.ones((2 * t + 1, 2 * t + 1), np.uint8)).astype(bool)
    return mask & ~inner


def similarity_panels(
    image: np.ndarray, pred: Prediction, clip_size: int, geometry: str = "reference"
) -> np.ndarray | None:
    """The similarity map of every ``[SEG]`` over the image, with its SasP points (positive green, negative red,
    neutral grey), left to right in answer order and separated by white bars.

    Arguments:
        image: (H, W, 3) uint8 RGB, the image the prediction is about.
        pred: the prediction; ``pred.similarity`` is (k, N); with SasP off there are no points and no panel (the
            ``[SEG]`` state's map then prompts nothing; the evaluation's pointing figures still use it).
        clip_size: CLIP input side (``cfg.model.vision.image_size``), to undo its centre crop.
        geometry: how the crop is undone, as the SasP module that made the points ("reference" or "clip").

    Returns:
        (H, k * W + (k - 1) * SEPARATOR, 3) uint8, or None when there is no map (no ``[SEG]``, or SasP off).
    """
    k = pred.similarity.shape[0]
    if k == 0 or pred.similarity.shape[1] == 0 or pred.point_coords.shape[1] == 0:
        return None
    h = image.shape[0]
    bar = np.full((h, SEPARATOR, 3), 255, dtype=np.uint8)
    panels: list[np.ndarray] = []
    for j in range(k):
        if j:
            panels.append(bar)
        panels.append(
            similarity_heatmap(
                image, pred.similarity[j], clip_size, pred.point_coords[j], pred.point_labels[j], geometry=geometry
            )
        )
    return np.concatenate(panels, axis=1)


def write_mask_pngs(masks: np.ndarray, directory: Path, stem: str) -> list[Path]:
    """One single-channel PNG per mask (255 inside, 0 outside, at the image's size): ``<stem>_mask_<j>.png``,
    j from 1. Empty masks are written too, so file j is always the j-th ``[SEG]``.

    Arguments:
        masks: (k, H, W) bool.
        directory: where to write (created).
        stem: file-name prefix.

    Returns:
        the k paths, in order.
    """
    return [
        save_png(masks[j].astype(np.uint8) * 255, Path(directory) / f"{stem}_mask_{j + 1}.png")
        for j in range(masks.shape[0])
    ]
