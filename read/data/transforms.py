"""Image loading and the two preprocessing branches (CLIP and SAM), written once for training, evaluation and chat.

* CLIP (``clip_preprocess``): shortest side to ``S_clip`` with PIL bicubic, centre crop ``S_clip x S_clip``, scale
  to [0, 1], normalise with the CLIP mean/std. This is exactly what transformers' PIL-backend
  ``CLIPImageProcessor`` does with ``size={"shortest_edge": S_clip}`` and ``crop_size=S_clip`` (the reference's
  processor in transformers 4.31 was PIL-based too); ``tests/test_data_transforms.py`` checks equality. (The
  default, torchvision-backed ``CLIPImageProcessor`` of transformers 5 resamples differently, by up to ~1/255.)
* SAM (``sam_preprocess``): longest side to ``S_sam`` with segment_anything's ``ResizeLongestSide`` rounding and PIL
  bilinear resampling, normalise on the 0-255 scale with SAM's mean/std, zero-pad right/bottom to ``S_sam``.

The sizes come from the model config (``vision.image_size``, ``sam.image_size``); nothing here assumes 336/1024.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from read.config import ModelConfig
from read.constants import CLIP_MEAN, CLIP_STD, SAM_PIXEL_MEAN, SAM_PIXEL_STD
from read.data.sample import DataError

__all__ = [
    "ImageLoadError",
    "PreprocessedImage",
    "ImagePreprocessor",
    "check_complete",
    "image_size",
    "load_image",
    "clip_preprocess",
    "sam_resized_size",
    "sam_preprocess",
]


class ImageLoadError(DataError):
    """An image file is missing, unreadable or not an image; the message names the file."""


_JPEG_START = b"\xff\xd8"
_JPEG_SCAN = b"\xff\xda"  # start of scan: cannot occur inside entropy-coded data (0xFF bytes there are stuffed)
_JPEG_END = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND"
# EXIF orientations that turn the picture by 90 degrees; OpenCV applies the orientation when it decodes.
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def check_complete(path: str, data: bytes) -> None:
    """Raise :class:`ImageLoadError` if a JPEG or PNG file is cut short.

    OpenCV decodes a truncated JPEG without an error (libjpeg fills the missing rows with grey and only prints
    "Premature end of JPEG file", without the file name). A complete JPEG has an end-of-image marker after its last
    scan; a complete PNG has an ``IEND`` chunk. Other formats are left to the decoder.

    Arguments:
        path: the file, for the message.
        data: its bytes.
    """
    if data.startswith(_JPEG_START):
        last_scan = data.rfind(_JPEG_SCAN)
        if last_scan < 0 or data.find(_JPEG_END, last_scan + 2) < 0:
            raise ImageLoadError(
                f"{path}: truncated JPEG (no end-of-image marker after the image data); download or copy the file again"
            )
    elif data.startswith(_PNG_SIGNATURE) and data.rfind(_PNG_END) < 0:
        raise ImageLoadError(f"{path}: truncated PNG (no IEND chunk); download or copy the file again")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB.

    Arguments:
        path: image file (any format OpenCV or PIL can decode; grey and RGBA images become RGB).

    Returns:
        (H, W, 3) uint8 RGB array.

    Raises:
        ImageLoadError: the file does not exist, is truncated (:func:`check_complete`) or cannot be decoded.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ImageLoadError(f"{path} is a directory, not an image file")
    if not os.path.isfile(path):
        raise ImageLoadError(f"image file not found: {path}")
    with open(path, "rb") as f:
        check_complete(path, f.read())
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is not None and bgr.size > 0:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    try:  # formats OpenCV does not decode (e.g. GIF)
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
    except Exception as e:  # PIL raises several unrelated exception types for broken files
        raise ImageLoadError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of the array :func:`load_image` returns, read from the file header (no decoding).

    Raises:
        ImageLoadError: the file does not exist or its header is not an image's.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageLoadError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Exception as e:  # PIL raises several unrelated exception types for broken files
        raise ImageLoadError(f"cannot read the header of image {path}: {type(e).__name__}: {e}") from e
    return (w, h) if orientation in _TRANSPOSING_ORIENTATIONS else (h, w)


def _check_rgb(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image of shape {image.shape}")


def clip_crop_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Geometry of the CLIP processor's "resize the shortest side, then centre-crop a square" at ``size``.

    As transformers' ``CLIPImageProcessor`` (``get_resize_output_image_size(default_to_square=False)`` and
    ``center_crop``): the shortest side becomes exactly ``size``, the longest ``int(size * long / short)``, and the
    crop starts at ``(resized - size) // 2`` on each axis, so an odd excess leaves the extra row/column at the
    bottom/right. It is what :func:`clip_preprocess` does, and SasP's ``"clip"`` geometry undoes it
    (:func:`read.model.sasp.pad_geometry`).

    Arguments:
        height, width: original image size in pixels.
        size: side of the square crop (CLIP input side, or the coarse grid side for map B).

    Returns:
        (resized_height, resized_width, top, left): the resized image before the crop and the crop offsets; undoing
        the crop pads ``top`` rows above, ``resized_height - size - top`` below, and likewise for columns.
    """
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_h, new_w = size, int(size * width / height)
    return new_h, new_w, (new_h - size) // 2, (new_w - size) // 2


def clip_preprocess(image: np.ndarray, size: int) -> Tensor:
    """CLIP branch: shortest side to ``size`` (bicubic), centre crop, rescale, normalise.

    Arguments:
        image: (H, W, 3) uint8 RGB.
        size: S_clip, the CLIP input side.

    Returns:
        (3, size, size) float32.
    """
    _check_rgb(image)
    new_h, new_w, top, left = clip_crop_geometry(image.shape[0], image.shape[1], size)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=Image.BICUBIC))
    crop = resized[top : top + size, left : left + size]
    x = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


_SAM_MEAN = np.asarray(SAM_PIXEL_MEAN, dtype=np.float32)
_SAM_STD = np.asarray(SAM_PIXEL_STD, dtype=np.float32)


def sam_resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after SAM's longest-side resize to ``size`` (segment_anything ``ResizeLongestSide`` rounding)."""
    scale = size * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def sam_preprocess(image: np.ndarray, size: int) -> tuple[Tensor, tuple[int, int]]:
    """SAM branch: longest side to ``size`` (bilinear), normalise on the 0-255 scale, zero-pad right/bottom.

    Arguments:
        image: (H, W, 3) uint8 RGB.
        size: S_sam, the SAM input side.

    Returns:
        ((3, size, size) float32, (h, w) the resized size before padding).
    """
    _check_rgb(image)
    h, w = sam_resized_size(image.shape[0], image.shape[1], size)
    resized = np.asarray(Image.fromarray(image).resize((w, h), resample=Image.BILINEAR))
    # float32 arithmetic in numpy (the same IEEE operations as in torch), written into a zero-padded buffer
    x = np.zeros((size, size, 3), dtype=np.float32)
    x[:h, :w] = (resized.astype(np.float32) - _SAM_MEAN) / _SAM_STD
    return torch.from_numpy(x.transpose(2, 0, 1).copy()), (h, w)


@dataclass
class PreprocessedImage:
    """Both model views of one image.

    Attributes:
        pixel_values: (3, S_clip, S_clip) CLIP input.
        sam_image: (3, S_sam, S_sam) SAM input.
        original_size: (H, W) of the image.
        resized_size: (h, w) inside the padded SAM input.
    """

    pixel_values: Tensor
    sam_image: Tensor
    original_size: tuple[int, int]
    resized_size: tuple[int, int]


class ImagePreprocessor:
    """Applies both branches with the sizes of a model config.

    Arguments:
        clip_size: S_clip (``model.vision.image_size``).
        sam_size: S_sam (``model.sam.image_size``).
    """

    def __init__(self, clip_size: int, sam_size: int) -> None:
        if clip_size < 1 or sam_size < 1:
            raise ValueError(f"image sizes must be positive, got clip_size={clip_size}, sam_size={sam_size}")
        self.clip_size = clip_size
        self.sam_size = sam_size

    @classmethod
    def from_config(cls, model_cfg: ModelConfig) -> "ImagePreprocessor":
        """Build from a :class:`read.config.ModelConfig`."""
        return cls(model_cfg.vision.image_size, model_cfg.sam.image_size)

    def __call__(self, image: np.ndarray) -> PreprocessedImage:
        """Arguments: image (H, W, 3) uint8 RGB. Returns: :class:`PreprocessedImage`."""
        sam_image, resized = sam_preprocess(image, self.sam_size)
        return PreprocessedImage(
            pixel_values=clip_preprocess(image, self.clip_size),
            sam_image=sam_image,
            original_size=(int(image.shape[0]), int(image.shape[1])),
            resized_size=resized,
        )
