from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from ckptkit.training.rng import (
    capture_rng_state,
    capture_rng_states_all_ranks,
    restore_rng_state,
    restore_rng_states_all_ranks,
)


def _draw() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_restoring_a_captured_state_replays_python_numpy_and_torch_draws() -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng_state()
    expected = _draw()
    _draw()
    assert restore_rng_state(state) == []
    assert _draw() == expected


def test_the_state_survives_a_weights_only_round_trip() -> None:
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.standard_normal()
    state = capture_rng_states_all_ranks()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    expected = (random.gauss(0, 1), np.random.standard_normal(), torch.randn(2).tolist())
    assert restore_rng_states_all_ranks(loaded, rank=0, world_size=1) == []
    assert (random.gauss(0, 1), np.random.standard_normal(), torch.randn(2).tolist()) == expected


def test_python_and_numpy_states_are_stored_as_int64_tensors_of_their_full_length() -> None:
    state = capture_rng_state()
    assert state["python"]["state"].dtype == torch.int64 and state["python"]["state"].shape == (625,)
    assert state["numpy"]["keys"].dtype == torch.int64 and state["numpy"]["keys"].shape == (624,)
    assert state["torch_cpu"].dtype == torch.uint8


def test_a_changed_world_size_warns_that_random_streams_will_differ() -> None:
    state = {"world_size": 2, "ranks": [capture_rng_state(), capture_rng_state()]}
    warnings = restore_rng_states_all_ranks(state, rank=2, world_size=3)
    assert warnings[0].startswith("the checkpoint holds RNG states for 2 rank(s) but this run has 3")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_states_on_a_machine_without_cuda_are_reported_not_restored() -> None:
    state = {**capture_rng_state(), "cuda": [torch.zeros(16, dtype=torch.uint8)]}
    assert restore_rng_state(state) == [
        "the checkpoint has CUDA RNG states but CUDA is not available here; not restored"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_replay_after_restore() -> None:
    state = capture_rng_state()
    expected = torch.rand(4, device="cuda").tolist()
    torch.rand(4, device="cuda")
    restore_rng_state(state)
    assert torch.rand(4, device="cuda").tolist() == expected
