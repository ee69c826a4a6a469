"""The training mixture: determinism per (seed, epoch, index), proportions, sharding, bad-sample handling."""

from __future__ import annotations

import collections
import logging

import numpy as np
import pytest
import torch

from fixtures import write_all, write_reason_seg
from read.config import DataConfig, load_config
from read.data.collate import ReadCollator
from read.data.mixture import MixtureDataset, ShardedSampler, build_train_dataset, samples_per_epoch
from read.data.reason_seg import ReasonSegDataset
from read.data.sample import DataError, Query, Sample, empty_masks, single_turn, template_set

READ_T = template_set("read")
TYPES = ["reason_seg", "refer_seg", "neg_refer_seg", "correct_refer_seg", "sem_seg", "vqa"]


class ToySource:
    """Draws a number from the generator; no files."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __len__(self) -> int:
        return 1

    def sample(self, rng):
        value = int(rng.integers(1_000_000))
        q = Query(single_turn("<image>\nq", "a"), empty_masks(2, 2), {"value": value})
        return Sample(np.zeros((2, 2, 3), np.uint8), f"{self.name}.jpg", [q], self.name)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_all(d)
    return d


def all_types_config(root, **kw):
    return DataConfig(dataset_dir=str(root), datasets=TYPES, sample_rates=[1.0] * len(TYPES),
                      refer_seg_data=["refclef", "refcoco", "refcoco+", "refcocog", "grefcoco"], **kw)  # fmt: skip


def signature(sample: Sample):
    return (sample.image_path, [q.messages for q in sample.queries], [q.masks.tobytes() for q in sample.queries])


def test_each_index_is_deterministic(root):
    cfg = all_types_config(root)
    a = build_train_dataset(cfg, 40, seed=7)
    b = build_train_dataset(cfg, 40, seed=7)
    order = list(range(40))
    forward = [signature(a[i]) for i in order]
    backward = {i: signature(b[i]) for i in reversed(order)}
    assert forward == [backward[i] for i in order]
    assert len({s[0] for s in forward}) > 5  # many different images
    other_seed = build_train_dataset(cfg, 40, seed=8)
    assert sum(signature(other_seed[i]) != forward[i] for i in order) > 10
    a.set_epoch(1)
    assert sum(signature(a[i]) != forward[i] for i in order) > 10
    a.set_epoch(0)
    assert [signature(a[i]) for i in order] == forward


def test_every_type_is_drawn(root):
    ds = build_train_dataset(all_types_config(root), 120, seed=0)
    names = collections.Counter(ds.sources[ds.source_index(i)].name for i in range(120))
    assert set(names) == set(TYPES)
    kinds = {ds[i].dataset for i in range(120)}
    assert {"reason_seg", "refcoco", "fprefcoco", "R-refcoco", "vqa"} <= kinds


def test_proportions_match_rates():
    ds = MixtureDataset([ToySource("a"), ToySource("b"), ToySource("c")], [6, 3, 1], 8000, seed=3)
    counts = collections.Counter(ds.source_index(i) for i in range(8000))
    for k, p in enumerate([0.6, 0.3, 0.1]):
        sigma = (p * (1 - p) / 8000) ** 0.5
        assert abs(counts[k] / 8000 - p) < 4 * sigma, counts
    values = [ds[i].queries[0].meta["value"] for i in range(200)]
    assert len(set(values)) > 190


def test_zero_rate_source_is_never_drawn():
    ds = MixtureDataset([ToySource("a"), ToySource("b")], [1, 0], 500, seed=0)
    assert {ds[i].dataset for i in range(500)} == {"a"}
    with pytest.raises(ValueError, match="non-negative"):
        MixtureDataset([ToySource("a")], [-1], 5)
    with pytest.raises(ValueError, match="one rate per source"):
        MixtureDataset([ToySource("a")], [1, 2], 5)


def test_sharded_sampler():
    shards = [list(ShardedSampler(10, rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    eval_shards = [list(ShardedSampler(10, rank=r, world_size=3, drop_remainder=False)) for r in range(3)]
    assert sorted(i for s in eval_shards for i in s) == list(range(10))  # all, none twice
    assert [len(ShardedSampler(10, rank=r, world_size=3, drop_remainder=False)) for r in range(3)] == [4, 3, 3]
    assert list(ShardedSampler(10, rank=1, world_size=3, start=1)) == [4, 7]
    with pytest.raises(ValueError, match="rank"):
        ShardedSampler(10, rank=3, world_size=3)
    assert samples_per_epoch(load_config(None).train, world_size=2) == 2 * 10 * 500 * 2


def test_dataloader_workers_do_not_change_batches(root, tiny_tokenizer):
    cfg = load_config("configs/tiny_test.yaml")
    data_cfg = all_types_config(root)
    collate = ReadCollator.from_config(cfg, tiny_tokenizer)

    def batches(workers, rank, world):
        ds = build_train_dataset(data_cfg, 16, seed=1, prepare=collate.encode_sample)
        sampler = ShardedSampler(len(ds), rank=rank, world_size=world)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers,
                                             collate_fn=collate)  # fmt: skip
        return [(b.meta, b.input_ids) for b in loader]

    single = batches(0, 0, 1)
    multi = batches(2, 0, 1)
    assert [m for m, _ in single] == [m for m, _ in multi]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(single, multi))
    # Two ranks see disjoint indices that together cover the epoch.
    seen = [m["index"] for r in range(2) for metas, _ in batches(0, r, 2) for m in metas]
    assert sorted(set(seen)) == list(range(16))


def test_bad_samples_are_skipped_counted_and_named(tmp_path, caplog):
    write_reason_seg(tmp_path)
    (tmp_path / "reason_seg/ReasonSeg/train/b.jpg").write_bytes(b"broken")
    src = ReasonSegDataset(str(tmp_path), "ReasonSeg|train", templates=READ_T)
    ds = MixtureDataset([src], [1.0], 60, seed=0)
    with caplog.at_level(logging.WARNING, logger="read.data.mixture"):
        paths = [ds[i].image_path for i in range(60)]
    assert not any(p.endswith("b.jpg") for p in paths)
    assert ds.skipped["reason_seg"] > 0
    assert any("b.jpg" in r.getMessage() for r in caplog.records)
    strict = MixtureDataset([src], [1.0], 60, seed=0, strict=True)
    with pytest.raises(DataError, match="b.jpg"):
        for i in range(60):
            strict[i]


def test_too_long_everywhere_gives_up(root, tiny_tokenizer):
    cfg = load_config("configs/tiny_test.yaml", ["data.model_max_length=10"])
    collate = ReadCollator.from_config(cfg, tiny_tokenizer)
    ds = build_train_dataset(DataConfig(dataset_dir=str(root), max_sample_attempts=3), 5, seed=0,
                             prepare=collate.encode_sample)  # fmt: skip
    with pytest.raises(DataError, match="3 bad samples in a row at index 0"):
        ds[0]
    assert collate.stats["rows_too_long"] >= 3
