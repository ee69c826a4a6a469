"""LLaVA instruction data."""

from __future__ import annotations

import numpy as np
import pytest

from fixtures import write_llava
from read.data.sample import ASSISTANT, USER, DataError
from read.data.vqa import VQADataset, vqa_messages


def test_vqa_samples(tmp_path):
    write_llava(tmp_path)
    ds = VQADataset(str(tmp_path))
    assert len(ds) == 2
    got = {}
    for i in range(10):
        s = ds.sample(np.random.default_rng(i))
        (q,) = s.queries
        assert q.masks.shape == (0, 24, 32) and q.num_seg_tokens() == 0
        got[s.image_path.split("/")[-1]] = q.messages
    assert got["000000000001.jpg"] == [
        (USER, "<image>\nWhat is shown?"),
        (ASSISTANT, "A red box."),
        (USER, "What colour is it?"),
        (ASSISTANT, "Red."),
    ]
    # The leading assistant turn is dropped.
    assert got["000000000002.jpg"] == [(USER, "<image>\nDescribe the image."), (ASSISTANT, "Two boxes.")]


def test_vqa_messages_without_image_token():
    msgs = vqa_messages([{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}])
    assert msgs[0] == (USER, "<image>\nHi?")


def test_vqa_bad_items(tmp_path):
    with pytest.raises(DataError, match="item 3"):
        vqa_messages([{"from": "robot", "value": "x"}], "item 3")
    with pytest.raises(FileNotFoundError, match="llava_instruct_150k.json"):
        VQADataset(str(tmp_path))
