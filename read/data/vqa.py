"""Visual instruction data (LLaVA ``llava_instruct_150k``): multi-turn conversations about COCO images, no masks.

On disk: ``<dataset_dir>/llava_dataset/<vqa_data>.json`` (a list of ``{id, image, conversations: [{from, value}]}``,
``from`` in {"human", "gpt"}) and the images in ``<dataset_dir>/coco/train2017/``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from read.constants import IMAGE_TOKEN
from read.data.sample import ASSISTANT, USER, DataError, Message, Query, Sample, empty_masks
from read.data.transforms import load_image
from read.errors import MissingFileError

__all__ = ["vqa_messages", "VQADataset"]

_ROLES = {"human": USER, "gpt": ASSISTANT}


def vqa_messages(conversations: list[dict], source: str = "") -> list[Message]:
    """LLaVA turns -> (role, text) messages.

    ``<image>`` is moved to the front of its turn as ``"<image>\\n..."`` (LLaVA ``preprocess_multimodal``), a
    leading assistant turn is dropped, and if no turn mentions the image, ``<image>\\n`` is put in front of the first
    question so that the row still carries the image tokens.

    Raises:
        DataError: an unknown speaker or a non-string value (message names ``source``).
    """
    messages: list[Message] = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or turn.get("from") not in _ROLES or not isinstance(turn.get("value"), str):
            raise DataError(f"{source}: conversations[{i}] must be {{'from': 'human'|'gpt', 'value': str}}")
        value = turn["value"]
        if IMAGE_TOKEN in value:
            value = (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()
        messages.append((_ROLES[turn["from"]], value))
    if messages and messages[0][0] != USER:
        messages = messages[1:]
    if not messages:
        raise DataError(f"{source}: empty conversation")
    if not any(IMAGE_TOKEN in text for _, text in messages):
        messages[0] = (messages[0][0], IMAGE_TOKEN + "\n" + messages[0][1])
    return messages


class VQADataset:
    """VQA training source: a random item becomes one multi-turn row without masks.

    Arguments:
        dataset_dir: the dataset root.
        vqa_data: the JSON name under ``llava_dataset/`` without extension.
    """

    def __init__(self, dataset_dir: str, vqa_data: str = "llava_instruct_150k") -> None:
        self.name = "vqa"
        self.json_path = os.path.join(dataset_dir, "llava_dataset", f"{vqa_data}.json")
        self.image_root = os.path.join(dataset_dir, "coco", "train2017")
        if not os.path.isfile(self.json_path):
            raise MissingFileError(f"vqa: conversation file not found: {self.json_path}")
        with open(self.json_path, "rb") as f:
            try:
                self.items = json.loads(f.read())
            except json.JSONDecodeError as e:
                raise DataError(f"{self.json_path}: invalid JSON ({e})") from e
        if not isinstance(self.items, list) or not self.items:
            raise DataError(f"{self.json_path}: expected a non-empty list of conversations")

    def __len__(self) -> int:
        return len(self.items)

    def image_path(self, item: dict) -> str:
        return os.path.join(self.image_root, item["image"])

    def sample(self, rng: np.random.Generator) -> Sample:
        """One random conversation with its image."""
        i = int(rng.integers(len(self.items)))
        item = self.items[i]
        source = f"{self.json_path}: item {i}"
        if not isinstance(item, dict) or "image" not in item or "conversations" not in item:
            raise DataError(f"{source}: needs 'image' and 'conversations'")
        path = self.image_path(item)
        image = load_image(path)
        messages = vqa_messages(item["conversations"], source)
        meta = {"id": item.get("id"), "exists": False, "mode": "vqa"}
        query = Query(messages, empty_masks(image.shape[0], image.shape[1]), meta)
        return Sample(image, path, [query], self.name)
