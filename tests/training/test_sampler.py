from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptkit.training.sampler import DataPosition, ResumableSampler


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_each_epoch_is_a_permutation_of_every_sample_fixed_by_seed_and_epoch() -> None:
    sampler = ResumableSampler(num_samples=10, batch_size=3, seed=7)
    perm0, perm1 = sampler.permutation(0), sampler.permutation(1)
    assert sorted(perm0.tolist()) == list(range(10))
    assert not torch.equal(perm0, perm1)
    assert torch.equal(perm0, ResumableSampler(10, 3, seed=7).permutation(0))
    assert not torch.equal(perm0, ResumableSampler(10, 3, seed=8).permutation(0))


def test_drawing_batches_does_not_move_the_global_torch_rng() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    _take(ResumableSampler(50, 4, seed=1).iterate_from(ResumableSampler(50, 4, seed=1).start_position()), 30)
    assert torch.equal(torch.rand(3), expected)


def test_steps_per_epoch_drops_the_last_partial_batch_of_every_rank() -> None:
    assert ResumableSampler(num_samples=44, batch_size=4, seed=0).steps_per_epoch == 11
    assert ResumableSampler(num_samples=44, batch_size=4, seed=0, world_size=2, rank=1).steps_per_epoch == 5


def test_ranks_draw_disjoint_samples_from_the_same_permutation() -> None:
    ranks = [ResumableSampler(24, 3, seed=5, world_size=2, rank=r) for r in range(2)]
    start = ranks[0].start_position()
    first = [next(s.iterate_from(start)).sample_ids.tolist() for s in ranks]
    assert set(first[0]).isdisjoint(first[1])
    assert first[0] + first[1] == ranks[0].permutation(0)[:6].tolist()


def test_the_last_batch_of_an_epoch_moves_the_position_to_batch_zero_of_the_next() -> None:
    sampler = ResumableSampler(num_samples=12, batch_size=4, seed=3)
    end_of_epoch_1 = DataPosition(epoch=1, batch_in_epoch=2, steps_per_epoch=3, micro_step=0, grad_accum=1,
                                  sampler_seed=3, batch_size=4).advanced()
    assert (end_of_epoch_1.epoch, end_of_epoch_1.batch_in_epoch) == (2, 0)
    batch = next(sampler.iterate_from(end_of_epoch_1))
    assert (batch.epoch, batch.index) == (2, 0)
    assert batch.sample_ids.tolist() == sampler.permutation(2)[:4].tolist()


def test_advancing_counts_micro_steps_within_the_accumulation_window_across_epochs() -> None:
    sampler = ResumableSampler(num_samples=12, batch_size=4, seed=3)
    position = sampler.start_position(grad_accum=2)
    seen = []
    for _ in range(5):
        position = position.advanced()
        seen.append((position.epoch, position.batch_in_epoch, position.micro_step))
    assert seen == [(0, 1, 1), (0, 2, 0), (1, 0, 1), (1, 1, 0), (1, 2, 1)]
    assert position.batches_consumed == 5


def test_data_position_survives_its_dict_form() -> None:
    position = DataPosition(2, 5, 11, 1, 2, 1337, 4, world_size=2)
    data = position.to_dict()
    assert data == {"epoch": 2, "batch_in_epoch": 5, "steps_per_epoch": 11, "micro_step": 1, "grad_accum": 2,
                    "sampler_seed": 1337, "batch_size": 4, "world_size": 2}
    assert DataPosition.from_dict(data) == position


def test_resume_warnings_name_every_changed_setting() -> None:
    saved = ResumableSampler(40, 4, seed=1).start_position()
    warnings = ResumableSampler(40, 5, seed=2).resume_warnings(saved)
    assert any("sampler seed was 1 when saved, is 2 now" in w for w in warnings)
    assert any("batch size was 4 when saved, is 5 now" in w for w in warnings)
    assert any("batches per epoch was 10 when saved, is 8 now" in w for w in warnings)


@settings(max_examples=40, deadline=None)
@given(num_samples=st.integers(4, 40), batch_size=st.integers(1, 4), stop=st.integers(0, 60))
def test_resuming_at_any_batch_continues_the_uninterrupted_stream_without_repeat_or_skip(
        num_samples: int, batch_size: int, stop: int) -> None:
    sampler = ResumableSampler(num_samples, batch_size, seed=11)
    start = sampler.start_position(grad_accum=3)
    uninterrupted = _take(sampler.iterate_from(start), stop + 8)
    position = start
    for _ in range(stop):
        position = position.advanced()
    resumed = _take(ResumableSampler(num_samples, batch_size, seed=11).iterate_from(position), 8)
    assert [(b.epoch, b.index, b.sample_ids.tolist()) for b in resumed] == [
        (b.epoch, b.index, b.sample_ids.tolist()) for b in uninterrupted[stop:]
    ]
