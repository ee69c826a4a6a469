"""Deterministic synthetic scenes for pre-training: scene ``i`` of a stream is a pure function of (seed, stream, i).

A :class:`SceneStream` draws scenes with :func:`read.data.synthetic.generate_scene` (the same drawing code and
palette as the quickstart's dataset) and passes each image through a JPEG round trip, as the written datasets do.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from read.data.synthetic import SceneObject, SyntheticConfig, generate_scene
from read.pretraining.config import SceneSettings

# Index ranges of the streams (a stream never reaches the next one's range).
STREAMS = {"alignment": 0, "instruction": 1, "sam": 2, "tokenizer": 3, "eval": 4, "language": 5}
_STREAM_SPAN = 10_000_000


@dataclass
class Scene:
    """A drawn scene: (H, W, 3) uint8 RGB image (after the JPEG round trip) and its objects (``visible`` masks)."""

    image: np.ndarray
    objects: list[SceneObject]


def synthetic_config(settings: SceneSettings) -> SyntheticConfig:
    """The generator settings of the pre-training scenes (no held-out colour x shape pairs are used: the train
    split)."""
    return SyntheticConfig(
        image_size=settings.image_size,
        num_objects=(settings.num_objects[0], settings.num_objects[1]),
        jpeg_quality=settings.jpeg_quality,
        false_premise_queries=0,
    )


class SceneStream:
    """Scenes of one stream (a key of :data:`STREAMS`).

    Arguments:
        settings: the scene settings.
        stream: which stream; the streams never share a scene.
    """

    def __init__(self, settings: SceneSettings, stream: str) -> None:
        if stream not in STREAMS:
            raise ValueError(f"unknown scene stream {stream!r}; known: {sorted(STREAMS)}")
        self.settings = settings
        self.config = synthetic_config(settings)
        self.offset = STREAMS[stream] * _STREAM_SPAN
        self.split = "val" if stream == "eval" else "train"

    def __getitem__(self, index: int) -> Scene:
        if not 0 <= index < _STREAM_SPAN:
            raise IndexError(f"scene index {index} is outside [0, {_STREAM_SPAN})")
        image, _, objects = generate_scene(self.config, self.split, self.offset + index, self.settings.seed)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality])  # fmt: skip
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        decoded = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return Scene(decoded, objects)
