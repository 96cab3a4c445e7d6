"""Samplers that shard an index stream over ranks (as official DINOv2).

Every sampler takes the rank as `start` and the world size as `step`. The infinite samplers take
`advance`, the number of samples of *this rank's* stream to skip, so that a run resumed at iteration k
with B images per rank passes `advance = k * B` and sees exactly the indices the uninterrupted run would
have seen from iteration k on.

Resume fix: officially the training loader is seeded with the start
iteration and gets `advance = 0`, so a resumed run draws a different order; and
ShardedInfiniteSampler skips whole passes with `advance // sample_count`, although one pass of a rank
holds only `sample_count // world_size` samples, so any advance of a pass or more lands at the wrong
position. Here the seed comes from `train.seed` (passed by the caller) and whole passes are skipped
with the true per-rank pass length; the shuffled order of an uninterrupted run is unchanged.
"""

import itertools
import logging
import warnings
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


def _check_shard(start: int, step: int) -> None:
    if step < 1 or not 0 <= start < step:
        raise ValueError(f"need 0 <= start (rank) < step (world size), got start={start} step={step}")


def _index_dtype(size: int) -> torch.dtype:
    return torch.int32 if size <= 2**31 else torch.int64


def _pass_seed(seed: int, start: int, pass_index: int) -> int:
    """Seed of pass `pass_index` of rank `start` in ShardedInfiniteSampler (official formula)."""
    return seed + start + (pass_index << 24)


def _randperm_stream(size: int, generator: torch.Generator) -> Iterator[int]:
    """Lazy swap-based Fisher-Yates permutation of range(size), one randint draw per element."""
    perm = torch.arange(size, dtype=_index_dtype(size))
    for i in range(size):
        j = int(torch.randint(i, size, size=(1,), generator=generator).item())
        value = int(perm[j].item())
        perm[j] = perm[i].item()
        perm[i] = value
        yield value


def _shuffle_strided_slice(tensor: torch.Tensor, *, start: int, step: int, generator: torch.Generator) -> np.ndarray:
    """Shuffle `tensor[start::step]` truncated to len(tensor) // step entries (inside-out Fisher-Yates)."""
    stop = len(tensor)
    count = stop // step
    n_dropped = stop - step * count
    if n_dropped:
        warnings.warn(f"# of dropped samples: {n_dropped}", stacklevel=2)
    result = np.empty(count, dtype=np.int32 if stop <= 2**31 else np.int64)
    for i in range(count):
        j = int(torch.randint(0, i + 1, size=(1,), generator=generator).item()) if i > 0 else 0
        result[i] = result[j]
        result[j] = tensor[start + i * step].item()
    return result


def _new_shuffle_strided_slice(
    tensor: torch.Tensor, *, start: int, step: int, generator: torch.Generator
) -> np.ndarray:
    """Same contract as `_shuffle_strided_slice`, shuffled with one randperm (the official "new" variant)."""
    stop = len(tensor)
    count = stop // step
    n_dropped = stop - step * count
    if n_dropped:
        warnings.warn(f"# of dropped samples: {n_dropped}", stacklevel=2)
    order = torch.randperm(count, dtype=torch.int64, generator=generator)
    return tensor[start::step][order].numpy()


class EpochSampler(Sampler[int]):
    """Finite sampler of `size` indices per epoch over `sample_count` samples (tiled if size is larger).

    Shuffled with numpy default_rng(seed * epoch if seed != 0 else epoch); call `set_epoch` each epoch.
    Resuming mid-epoch is not supported: resume at an epoch boundary with `set_epoch`.
    """

    def __init__(
        self, *, size: int, sample_count: int, shuffle: bool = False, seed: int = 0, start: int = 0, step: int = 1
    ) -> None:
        _check_shard(start, step)
        self._size = size
        self._sample_count = sample_count
        self._shuffle = shuffle
        self._seed = seed
        self._start = start
        self._step = step
        self._epoch = 0

    def __iter__(self) -> Iterator[int]:
        n_tiles = (self._size + self._sample_count - 1) // self._sample_count
        tiled = np.tile(np.arange(self._sample_count), n_tiles)
        if self._shuffle:
            seed = self._seed * self._epoch if self._seed != 0 else self._epoch
            indices = np.random.default_rng(seed).choice(tiled, self._size, replace=False)
        else:
            indices = tiled[: self._size]
        yield from (int(i) for i in itertools.islice(indices, self._start, None, self._step))

    def __len__(self) -> int:
        return (self._size - self._start + self._step - 1) // self._step

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch


class InfiniteSampler(Sampler[int]):
    """Endless stream: strided ranges, or (shuffle) endless strided Fisher-Yates permutations.

    `advance` samples of this rank's stream are skipped by drawing them (exact, O(advance)).
    """

    def __init__(
        self,
        *,
        sample_count: int,
        shuffle: bool = False,
        seed: int = 0,
        start: int = 0,
        step: int = 1,
        advance: int = 0,
    ) -> None:
        _check_shard(start, step)
        if advance < 0:
            raise ValueError(f"advance={advance} must be >= 0")
        self._sample_count = sample_count
        self._seed = seed
        self._shuffle = shuffle
        self._start = start
        self._step = step
        self._advance = advance

    def __iter__(self) -> Iterator[int]:
        iterator = self._shuffled_iterator() if self._shuffle else self._iterator()
        yield from itertools.islice(iterator, self._advance, None)

    def _iterator(self) -> Iterator[int]:
        while True:
            yield from range(self._start, self._sample_count, self._step)

    def _shuffled_iterator(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self._seed)
        while True:
            permutation = _randperm_stream(self._sample_count, generator)
            yield from itertools.islice(permutation, self._start, None, self._step)


class ShardedInfiniteSampler(Sampler[int]):
    """Endless stream used for training.

    A global permutation (seeded with `seed`, identical on every rank) is cut into rank slices
    `perm[rank::W][: sample_count // W]`; pass k of a rank shuffles its slice with the seed
    seed + rank + (k << 24). Unshuffled: strided ranges. `advance` skips that many samples of this
    rank's stream; whole passes are skipped without drawing them.
    """

    def __init__(
        self,
        *,
        sample_count: int,
        shuffle: bool = False,
        seed: int = 0,
        start: int = 0,
        step: int = 1,
        advance: int = 0,
        use_new_shuffle_tensor_slice: bool = False,
    ) -> None:
        _check_shard(start, step)
        if advance < 0:
            raise ValueError(f"advance={advance} must be >= 0")
        if shuffle and sample_count < step:
            raise ValueError(f"{sample_count} samples cannot be sharded over {step} ranks")
        self._sample_count = sample_count
        self._seed = seed
        self._shuffle = shuffle
        self._start = start
        self._step = step
        self._advance = advance
        self._shuffle_slice = _new_shuffle_strided_slice if use_new_shuffle_tensor_slice else _shuffle_strided_slice

    def pass_length(self) -> int:
        """Samples in one pass of this rank's stream."""
        if self._shuffle:
            return self._sample_count // self._step
        return len(range(self._start, self._sample_count, self._step))

    def __iter__(self) -> Iterator[int]:
        n_passes_skipped, n_skipped_in_pass = divmod(self._advance, self.pass_length())
        if self._shuffle:
            iterator = self._shuffled_iterator(first_pass=n_passes_skipped)
        else:
            iterator = self._iterator()
        yield from itertools.islice(iterator, n_skipped_in_pass, None)

    def _iterator(self) -> Iterator[int]:
        while True:
            yield from range(self._start, self._sample_count, self._step)

    def _shuffled_iterator(self, *, first_pass: int) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self._seed)
        permutation = torch.randperm(self._sample_count, dtype=_index_dtype(self._sample_count), generator=generator)
        pass_index = first_pass
        while True:
            generator.manual_seed(_pass_seed(self._seed, self._start, pass_index))
            shuffled = self._shuffle_slice(permutation, start=self._start, step=self._step, generator=generator)
            yield from (int(i) for i in shuffled)
            pass_index += 1
