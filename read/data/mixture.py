"""The training mixture: several sources sampled at fixed rates, deterministic per (seed, epoch, index).

As in the reference (READ ``HybridDataset``), an epoch is ``samples_per_epoch`` draws and a draw ignores which index
it is, except that here every index gets its own generator, ``np.random.default_rng([seed, epoch, index])``: the
source is drawn from it, and the source's own draws use ``[seed, epoch, index, attempt]``. Index ``i`` therefore maps
to the same sample whatever the number of DataLoader workers, processes or resumptions. :class:`ShardedSampler`
splits the indices of an epoch over data-parallel ranks without duplicates.

A bad sample (missing or truncated image, malformed annotation, ground truth without a usable target, every row too
long) is skipped, counted and logged with the file name, and the same source is asked again with the next attempt
number; ``strict=True`` raises instead. The sample finally returned carries the number of bad draws before it
(``Sample.skipped``), which the collator sums into ``ReadBatch.skipped_samples``: the training loop reports it per
step and per epoch, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from read.config import DataConfig, TrainConfig
from read.data.reason_seg import ReasonSegDataset
from read.data.refer_seg import ReferSegDataset
from read.data.sample import DataError, Sample, template_set
from read.data.sem_seg import SemSegDataset
from read.data.vqa import VQADataset
from read.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "DATASET_TYPES",
    "SampleSource",
    "MixtureDataset",
    "ShardedSampler",
    "build_source",
    "build_train_dataset",
    "samples_per_epoch",
]

DATASET_TYPES = ("reason_seg", "refer_seg", "neg_refer_seg", "correct_refer_seg", "sem_seg", "vqa")


class SampleSource(Protocol):
    """Anything that draws a training :class:`Sample` from a generator."""

    name: str

    def __len__(self) -> int: ...

    def sample(self, rng: np.random.Generator) -> Sample: ...


class MixtureDataset(torch.utils.data.Dataset):
    """Map-style dataset over a mixture of sources.

    Arguments:
        sources: the training sources.
        rates: one non-negative sampling weight per source (normalised).
        samples_per_epoch: the dataset length.
        seed: base seed.
        strict: raise on a bad sample instead of skipping it.
        max_attempts: consecutive bad samples tolerated for one index.
        prepare: applied to every drawn sample before it is returned (e.g. ``ReadCollator.encode_sample``, which
            tokenises the rows and drops those that are too long); a sample left without rows counts as bad.
    """

    def __init__(
        self,
        sources: Sequence[SampleSource],
        rates: Sequence[float],
        samples_per_epoch: int,
        *,
        seed: int = 0,
        strict: bool = False,
        max_attempts: int = 20,
        prepare: Callable[[Sample], Sample] | None = None,
    ) -> None:
        if not sources or len(sources) != len(rates):
            raise ValueError(f"need one rate per source, got {len(sources)} sources and {len(rates)} rates")
        weights = np.asarray(rates, dtype=np.float64)
        if (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError(f"sample rates must be non-negative with a positive sum, got {list(rates)}")
        if samples_per_epoch < 1 or max_attempts < 1:
            raise ValueError("samples_per_epoch and max_attempts must be >= 1")
        self.sources = list(sources)
        self.probs = weights / weights.sum()
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.strict = strict
        self.max_attempts = max_attempts
        self.prepare = prepare
        self.epoch = 0
        self.skipped: Counter[str] = Counter()  # bad samples per source, in this process

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns (call before each epoch, in every process)."""
        self.epoch = epoch

    def source_index(self, index: int) -> int:
        """The source drawn for ``index`` in the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return int(rng.choice(len(self.sources), p=self.probs))

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.samples_per_epoch:
            raise IndexError(f"index {index} out of range for {self.samples_per_epoch} samples per epoch")
        source = self.sources[self.source_index(index)]
        last: Exception | None = None
        for attempt in range(self.max_attempts):
            rng = np.random.default_rng([self.seed, self.epoch, index, attempt])
            try:
                sample = source.sample(rng)
                if self.prepare is not None:
                    sample = self.prepare(sample)
                if not sample.queries:
                    raise DataError(f"{sample.image_path}: no usable query rows")
            except DataError as e:
                if self.strict:
                    raise
                self.skipped[source.name] += 1
                logger.warning("skipping a bad %s sample (index %d, attempt %d): %s", source.name, index, attempt, e)
                last = e
                continue
            for q in sample.queries:
                q.meta.setdefault("index", index)
            sample.skipped = attempt
            return sample
        raise DataError(f"{source.name}: {self.max_attempts} bad samples in a row at index {index}; last: {last}")


class ShardedSampler(torch.utils.data.Sampler[int]):
    """The indices of one data-parallel rank: ``rank, rank + world_size, ...``.

    Arguments:
        num_samples: dataset length.
        rank, world_size: this process and the number of processes.
        start: how many of this rank's indices to skip (resuming inside an epoch).
        drop_remainder: True (training) gives every rank ``num_samples // world_size`` indices; False (evaluation)
            gives the first ``num_samples % world_size`` ranks one more, so every index is used exactly once and
            none twice [FIX: the reference's DistributedSampler pads with duplicates].
    """

    def __init__(
        self, num_samples: int, *, rank: int = 0, world_size: int = 1, start: int = 0, drop_remainder: bool = True
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world_size {world_size}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.start = start
        self.drop_remainder = drop_remainder

    def _indices(self) -> range:
        stop = (self.num_samples // self.world_size) * self.world_size if self.drop_remainder else self.num_samples
        return range(self.rank, stop, self.world_size)[self.start :]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


def samples_per_epoch(train_cfg: TrainConfig, world_size: int = 1) -> int:
    """READ's epoch length: batch_size x grad_accumulation_steps x steps_per_epoch x world_size."""
    return train_cfg.batch_size * train_cfg.grad_accumulation_steps * train_cfg.steps_per_epoch * world_size


def build_source(data_cfg: DataConfig, dataset_type: str) -> SampleSource:
    """One training source of ``data.datasets`` from a :class:`read.config.DataConfig`."""
    d = data_cfg.dataset_dir
    templates = template_set(data_cfg.templates)
    n = data_cfg.num_classes_per_sample
    if dataset_type == "reason_seg":
        return ReasonSegDataset(
            d,
            data_cfg.reason_seg_data,
            templates=templates,
            num_classes_per_sample=n,
            false_premise_prob=data_cfg.reason_seg_fp_prob,
            explanatory=data_cfg.explanatory,
        )
    refer_lists = {
        "refer_seg": data_cfg.refer_seg_data,
        "neg_refer_seg": data_cfg.neg_refer_seg_data,
        "correct_refer_seg": data_cfg.correct_refer_seg_data,
    }
    if dataset_type in refer_lists:
        return ReferSegDataset(
            d,
            list(refer_lists[dataset_type]),
            templates=templates,
            num_classes_per_sample=n,
            protocol=data_cfg.refer_protocol,
            name=dataset_type,
        )
    if dataset_type == "sem_seg":
        return SemSegDataset(
            d,
            list(data_cfg.sem_seg_data),
            templates=templates,
            num_classes_per_sample=n,
            denial_prob=data_cfg.sem_seg_denial_prob,
            correction_prob=data_cfg.sem_seg_correction_prob,
        )
    if dataset_type == "vqa":
        return VQADataset(d, data_cfg.vqa_data)
    raise ConfigError(f"unknown dataset type {dataset_type!r} in data.datasets; expected one of {list(DATASET_TYPES)}")


def build_train_dataset(
    data_cfg: DataConfig,
    num_samples: int,
    *,
    seed: int,
    prepare: Callable[[Sample], Sample] | None = None,
) -> MixtureDataset:
    """The training mixture of ``data.datasets`` at ``data.sample_rates``.

    Arguments:
        data_cfg: a :class:`read.config.DataConfig`.
        num_samples: samples per epoch (see :func:`samples_per_epoch`).
        seed: base seed (``train.seed``).
        prepare: see :class:`MixtureDataset` (pass ``collator.encode_sample``).
    """
    sources = [build_source(data_cfg, t) for t in data_cfg.datasets]
    return MixtureDataset(
        sources,
        data_cfg.sample_rates,
        num_samples,
        seed=seed,
        strict=data_cfg.strict,
        max_attempts=data_cfg.max_sample_attempts,
        prepare=prepare,
    )
