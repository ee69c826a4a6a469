"""Pictures of what the model returns: the SasP similarity map and points over the image, predicted masks.

All images are RGB ``uint8`` arrays of shape (H, W, 3); tensors are accepted wherever an array is. Nothing here is
shown on screen; :func:`save_png` writes a file.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from read.model.sasp import NEGATIVE, NEUTRAL, POSITIVE, full_resolution_map

# RGB colour of each point label.
LABEL_COLOURS = {POSITIVE: (0, 255, 0), NEGATIVE: (255, 0, 0), NEUTRAL: (128, 128, 128)}
OUTLINE = (255, 255, 255)
MASK_COLOUR = (255, 0, 0)


def similarity_heatmap(
    image: np.ndarray | Tensor,
    sim: np.ndarray | Tensor,
    clip_size: int = 336,
    coords: np.ndarray | Tensor | None = None,
    labels: np.ndarray | Tensor | None = None,
    *,
    alpha: float = 0.7,
    geometry: str = "reference",
) -> np.ndarray:
    """The similarity map (SasP's map A, docs/reference.md#sasp) as a JET heat map over the image, with the point
    prompts.

    Arguments:
        image: (H, W, 3) uint8 RGB original image.
        sim: (N,) raw similarities of one ``[SEG]`` (``PointPrompts.sim[i]``).
        clip_size: CLIP input side used to undo its centre crop (as for :func:`read.model.sasp.select_points`).
        coords: optional (K, 2) point (x, y) in image pixels.
        labels: (K,) labels in {1, 0, -1}; required with ``coords``.
        alpha: weight of the heat map in the blend.
        geometry: how the CLIP crop is undone, as the model's ``sasp.geometry`` ("reference" or "clip").

    Returns:
        (H, W, 3) uint8 RGB picture.
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    sim_t = torch.as_tensor(_to_numpy(sim), dtype=torch.float32).reshape(-1)
    heat = full_resolution_map(sim_t, (h, w), clip_size, geometry).numpy()  # (H, W) in [0, 1]
    heat = cv2.applyColorMap(np.rint(heat.clip(0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    out = (image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).round().astype(np.uint8)
    if coords is not None:
        if labels is None:
            raise ValueError("similarity_heatmap: labels are required with coords")
        out = draw_points(out, coords, labels)
    return out


def draw_points(
    image: np.ndarray | Tensor, coords: np.ndarray | Tensor, labels: np.ndarray | Tensor, radius: int | None = None
) -> np.ndarray:
    """Filled discs at the points, coloured by label (positive green, negative red, neutral grey), ringed in
    white; positives are drawn last so they stay visible.

    Arguments:
        image: (H, W, 3) uint8 RGB.
        coords: (K, 2) (x, y) in pixels.
        labels: (K,) in {1, 0, -1}.
        radius: disc radius in pixels; default about 1% of the shorter side, at least 2.

    Returns:
        (H, W, 3) uint8 copy with the points drawn.
    """
    out = np.ascontiguousarray(_check_image(image)).copy()
    xy = _to_numpy(coords).astype(np.float64).reshape(-1, 2)
    lab = _to_numpy(labels).astype(np.int64).reshape(-1)
    if xy.shape[0] != lab.shape[0]:
        raise ValueError(f"draw_points: {xy.shape[0]} points but {lab.shape[0]} labels")
    unknown = sorted(set(lab.tolist()) - set(LABEL_COLOURS))
    if unknown:
        raise ValueError(f"draw_points: labels must be in {sorted(LABEL_COLOURS)}, got {unknown}")
    if radius is None:
        radius = max(2, round(min(out.shape[:2]) / 100))
    for label in (NEUTRAL, NEGATIVE, POSITIVE):
        for x, y in xy[lab == label]:
            centre = (int(round(x)), int(round(y)))
            cv2.circle(out, centre, radius + 1, OUTLINE, -1)
            cv2.circle(out, centre, radius, LABEL_COLOURS[label], -1)
    return out


def mask_overlay(
    image: np.ndarray | Tensor,
    mask: np.ndarray | Tensor,
    colour: tuple[int, int, int] = MASK_COLOUR,
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend a colour into the image where the mask is on.

    Arguments:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) bool, 0/1, or logits (on where > 0).
        colour: RGB colour of the mask.
        alpha: weight of the colour inside the mask.

    Returns:
        (H, W, 3) uint8: ``(1 - alpha) * image + alpha * colour`` inside the mask, the image elsewhere.
    """
    image = _check_image(image)
    on = _to_numpy(mask) > 0
    if on.shape != image.shape[:2]:
        raise ValueError(f"mask_overlay: mask shape {on.shape} does not match image {image.shape[:2]}")
    out = image.copy()
    blend = image[on].astype(np.float32) * (1 - alpha) + np.asarray(colour, dtype=np.float32) * alpha
    out[on] = blend.round().astype(np.uint8)
    return out


def save_png(array: np.ndarray | Tensor, path: str | Path) -> Path:
    """Write an RGB (H, W, 3) or grey (H, W) uint8 array as a PNG, creating parent folders.

    Returns:
        the path written.
    """
    arr = _to_numpy(array)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"save_png: expected a uint8 (H, W) or (H, W, 3) array, got {arr.dtype} {arr.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = arr if arr.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"save_png: could not write {path}")
    return path


def _to_numpy(x: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype in (torch.bfloat16, torch.float16) else x).numpy()
    return np.asarray(x)


def _check_image(image: np.ndarray | Tensor) -> np.ndarray:
    arr = _to_numpy(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {arr.dtype} {arr.shape}")
    return arr
