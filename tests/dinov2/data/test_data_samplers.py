"""Samplers: disjoint rank shards, seeds, and exact resume (the stream after advancing k samples equals the tail
of the uninterrupted stream), with explicit rank/world_size and through a real DataLoader."""

import itertools

import pytest
import torch
from torch.utils.data import Dataset

from dinov2.data import SamplerType, make_data_loader
from dinov2.data.samplers import EpochSampler, InfiniteSampler, ShardedInfiniteSampler


def _take(sampler: object, n: int) -> list[int]:
    return list(itertools.islice(iter(sampler), n))  # type: ignore[call-overload]


@pytest.mark.filterwarnings("ignore:# of dropped samples")
@pytest.mark.parametrize("new_shuffle", [False, True])
def test_sharded_infinite_shards_are_disjoint(new_shuffle: bool) -> None:
    sample_count, world_size = 21, 2
    passes = [
        _take(
            ShardedInfiniteSampler(
                sample_count=sample_count,
                shuffle=True,
                seed=3,
                start=rank,
                step=world_size,
                use_new_shuffle_tensor_slice=new_shuffle,
            ),
            sample_count // world_size,
        )
        for rank in range(world_size)
    ]
    assert all(len(set(p)) == len(p) == 10 for p in passes)
    assert not set(passes[0]) & set(passes[1])
    assert len(set(passes[0]) | set(passes[1])) == 20  # one sample dropped so that shards have equal length
    assert passes[0] != sorted(passes[0])  # shuffled


@pytest.mark.filterwarnings("ignore:# of dropped samples")
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("sampler_cls", [ShardedInfiniteSampler, InfiniteSampler])
def test_resume_is_exact(sampler_cls: type, shuffle: bool) -> None:
    sample_count, world_size = 13, 2
    for rank in range(world_size):
        kwargs = {"sample_count": sample_count, "shuffle": shuffle, "seed": 7, "start": rank, "step": world_size}
        uninterrupted = _take(sampler_cls(**kwargs), 60)
        # Advances below one rank pass (6 or 7 samples), exactly one pass, and several passes: with the official
        # shortcut (advance // sample_count) the last ones would land on the wrong pass.
        for advance in (0, 1, 5, 6, 7, 12, 13, 20, 33):
            resumed = _take(sampler_cls(advance=advance, **kwargs), 60 - advance)
            assert resumed == uninterrupted[advance:], (sampler_cls.__name__, shuffle, rank, advance)


def test_sharded_infinite_seed_and_passes() -> None:
    kwargs = {"sample_count": 10, "shuffle": True, "start": 0, "step": 1}
    a = _take(ShardedInfiniteSampler(seed=0, **kwargs), 30)
    assert a == _take(ShardedInfiniteSampler(seed=0, **kwargs), 30)
    assert a != _take(ShardedInfiniteSampler(seed=1, **kwargs), 30)
    assert sorted(a[:10]) == sorted(a[10:20]) == list(range(10))
    assert a[:10] != a[10:20]  # every pass is reshuffled


def test_infinite_sampler_shards_cover_each_permutation() -> None:
    streams = [_take(InfiniteSampler(sample_count=9, shuffle=True, seed=2, start=rank, step=3), 3) for rank in range(3)]
    assert sorted(sum(streams, [])) == list(range(9))


def test_epoch_sampler_shards_epochs_and_length() -> None:
    samplers = [EpochSampler(size=11, sample_count=7, shuffle=True, seed=4, start=r, step=2) for r in range(2)]
    epoch0 = [list(s) for s in samplers]
    assert [len(s) for s in samplers] == [len(e) for e in epoch0] == [6, 5]
    merged = epoch0[0] + epoch0[1]
    # 11 draws without replacement from two tiles of range(7): every index once or twice.
    assert len(merged) == 11 and all(merged.count(index) in (1, 2) for index in range(7))
    for sampler in samplers:
        sampler.set_epoch(1)
    epoch1 = [list(s) for s in samplers]
    assert epoch1 != epoch0
    assert list(EpochSampler(size=5, sample_count=5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_invalid_shard_and_advance_arguments() -> None:
    with pytest.raises(ValueError, match="start"):
        ShardedInfiniteSampler(sample_count=10, start=2, step=2)
    with pytest.raises(ValueError, match="advance"):
        InfiniteSampler(sample_count=10, advance=-1)


class _IndexDataset(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


def _batches(loader: torch.utils.data.DataLoader, n: int) -> list[list[int]]:
    return [batch.tolist() for batch in itertools.islice(iter(loader), n)]


@pytest.mark.filterwarnings("ignore:# of dropped samples")
def test_data_loader_resume_with_workers_and_ranks() -> None:
    dataset = _IndexDataset(23)
    batch_size, n_batches = 4, 9
    common = {"dataset": dataset, "batch_size": batch_size, "seed": 11, "sampler_type": SamplerType.SHARDED_INFINITE}
    per_rank = []
    for rank in range(2):
        loader = make_data_loader(num_workers=2, rank=rank, world_size=2, **common)
        assert loader.pin_memory == torch.cuda.is_available()
        assert loader.persistent_workers
        uninterrupted = _batches(loader, n_batches)
        per_rank.append(uninterrupted)
        for start_iter in (2, 3, 5):  # 11 samples per rank pass: iteration 3 starts inside the second pass
            resumed = make_data_loader(
                num_workers=0, rank=rank, world_size=2, sampler_advance=start_iter * batch_size, **common
            )
            assert _batches(resumed, n_batches - start_iter) == uninterrupted[start_iter:]
    first_pass = [set(sum(batches, [])[:11]) for batches in per_rank]
    assert not first_pass[0] & first_pass[1]


def test_data_loader_argument_errors() -> None:
    dataset = _IndexDataset(8)
    with pytest.raises(ValueError, match="sampler_type='sharded'"):
        make_data_loader(dataset=dataset, batch_size=2, num_workers=0, sampler_type="sharded")
    with pytest.raises(ValueError, match="sampler_advance=4 needs an infinite sampler"):
        make_data_loader(dataset=dataset, batch_size=2, num_workers=0, sampler_type="epoch", sampler_advance=4)
    with pytest.raises(ValueError, match="sampler_size=5"):
        make_data_loader(dataset=dataset, batch_size=2, num_workers=0, sampler_type="infinite", sampler_size=5)
    with pytest.raises(ValueError, match="persistent_workers=True needs num_workers > 0"):
        make_data_loader(dataset=dataset, batch_size=2, num_workers=0, persistent_workers=True)
    loader = make_data_loader(
        dataset=dataset, batch_size=3, num_workers=0, sampler_type="distributed", shuffle=False, drop_last=False
    )
    assert [b.tolist() for b in loader] == [[0, 1, 2], [3, 4, 5], [6, 7]]
