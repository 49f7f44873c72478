"""`convert --to hf`: the RNG files are the ones transformers' Trainer restores, with the source's values."""
from __future__ import annotations

import dataclasses
import io
import random
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ckptkit.cli import main
from ckptkit.conversion import ConvertOptions, convert_checkpoint
from ckptkit.conversion.hf_rng import TRAINING_ARGS_NOTE
from ckptkit.training.rng import capture_rng_state, restore_rng_state
from trainers.lm import PRESETS, LMRun, RunOptions

ACCELERATE = Path(__file__).parents[1] / "fixtures" / "real" / "accelerate"


@pytest.fixture(autouse=True)
def _keep_global_generators() -> Iterator[None]:
    """These tests set the process's generators; put them back for the tests that follow."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(saved[0])
    np.random.set_state(saved[1])
    torch.set_rng_state(saved[2])


@pytest.fixture(scope="module")
def trainer_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real single-rank checkpoint of ckptkit's tiny LM trainer."""
    out = tmp_path_factory.mktemp("lm")
    config = dataclasses.replace(PRESETS["tiny"], max_steps=2, save_interval=2, eval_interval=2)
    result = LMRun(config, RunOptions(out=out, keep_last=None, progress_stream=io.StringIO())).run()
    assert result.status == "finished"
    return out / "final_model.pt"


def _with_ranks(source: Path, dest: Path, ranks: list[dict[str, Any]]) -> Path:
    """`source` with its rng_state replaced by these ranks' states (as a W-rank run saves them)."""
    ckpt = torch.load(source, weights_only=True)
    ckpt["rng_state"] = {"world_size": len(ranks), "ranks": ranks}
    torch.save(ckpt, dest)
    return dest


def _two_rank_states() -> list[dict[str, Any]]:
    states = []
    for seed in (11, 12):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        random.gauss(0, 1)   # leaves a cached gaussian in python's state: it must survive too
        state = capture_rng_state()
        state["cuda"] = [torch.full((16,), seed, dtype=torch.uint8), torch.full((16,), seed + 100, dtype=torch.uint8)]
        states.append(state)
    return states


def _draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def _draws_after_ckptkit_restore(state: dict[str, Any]) -> tuple[float, float, list[float]]:
    restore_rng_state({**state, "cuda": []})
    return _draws()


def _draws_after_trainer_restore(folder: Path, world_size: int, rank: int) -> tuple[float, float, list[float]]:
    _trainer_restore(folder, world_size, rank)
    return _draws()


def _trainer_restore(folder: Path, world_size: int, rank: int) -> None:
    """transformers' own Trainer._load_rng_state, on a stand-in holding only the arguments it reads,
    starting from generators seeded elsewhere."""
    transformers = pytest.importorskip("transformers")
    from transformers.training_args import ParallelMode

    random.seed(999)
    np.random.seed(999)
    torch.manual_seed(999)
    mode = ParallelMode.DISTRIBUTED if world_size > 1 else ParallelMode.NOT_DISTRIBUTED
    trainer = SimpleNamespace(args=SimpleNamespace(world_size=world_size, process_index=rank, parallel_mode=mode))
    transformers.Trainer._load_rng_state(trainer, str(folder))


def _assert_file_holds_the_state(written: dict[str, Any], state: dict[str, Any], cuda: Any) -> None:
    py = state["python"]
    assert written["python"] == (py["version"], tuple(py["state"].tolist()), py["gauss"])
    numpy_state = state["numpy"]
    assert written["numpy"] == ("MT19937", numpy_state["keys"].tolist(), numpy_state["pos"],
                                numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    assert written["cpu"].dtype == torch.uint8
    assert written["cpu"].numpy().tobytes() == state["torch_cpu"].numpy().tobytes()
    if cuda is None:
        assert "cuda" not in written
    elif isinstance(cuda, list):
        assert [c.numpy().tobytes() for c in written["cuda"]] == [c.numpy().tobytes() for c in cuda]
    else:
        assert written["cuda"].numpy().tobytes() == cuda.numpy().tobytes()


def test_a_single_rank_trainer_checkpoint_becomes_one_rng_state_pth_with_its_values(
        trainer_checkpoint: Path, tmp_path: Path) -> None:
    result = convert_checkpoint(trainer_checkpoint, tmp_path / "hf", ConvertOptions(to="hf"))
    names = sorted(p.name for p in result.files)
    assert names == ["model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt", "trainer_state.json"]
    assert not any(d.startswith("rng") for d in result.dropped)
    written = torch.load(tmp_path / "hf" / "rng_state.pth", weights_only=True)   # no allowlist needed
    state = torch.load(trainer_checkpoint, weights_only=True)["rng_state"]["ranks"][0]
    assert sorted(written) == ["cpu", "numpy", "python"]   # CPU run: no cuda entry, as Trainer writes it
    _assert_file_holds_the_state(written, state, None)
    assert written["python"][0] == 3 and len(written["python"][1]) == 625 and len(written["numpy"][1]) == 624


def test_transformers_restores_a_converted_single_rank_checkpoint_to_the_draws_ckptkit_restores(
        trainer_checkpoint: Path, tmp_path: Path) -> None:
    convert_checkpoint(trainer_checkpoint, tmp_path / "hf", ConvertOptions(to="hf"))
    state = torch.load(trainer_checkpoint, weights_only=True)["rng_state"]["ranks"][0]
    expected = _draws_after_ckptkit_restore(state)
    assert _draws_after_trainer_restore(tmp_path / "hf", world_size=1, rank=0) == expected
    assert _draws() != expected   # the generators moved on: equal draws above came from the restore


def test_two_ranks_become_rng_state_0_and_1_with_every_value_and_cuda_state_byte_for_byte(
        trainer_checkpoint: Path, tmp_path: Path) -> None:
    states = _two_rank_states()
    source = _with_ranks(trainer_checkpoint, tmp_path / "two.pt", states)
    result = convert_checkpoint(source, tmp_path / "hf", ConvertOptions(to="hf"))
    names = sorted(p.name for p in result.files)
    assert [n for n in names if n.startswith("rng")] == ["rng_state_0.pth", "rng_state_1.pth"]
    for rank, state in enumerate(states):
        written = torch.load(tmp_path / "hf" / f"rng_state_{rank}.pth", weights_only=True)
        assert written["python"][2] is not None   # the cached gaussian
        _assert_file_holds_the_state(written, state, state["cuda"])   # distributed: every device, a list


def test_transformers_restores_each_rank_of_a_converted_two_rank_checkpoint_to_that_ranks_draws(
        trainer_checkpoint: Path, tmp_path: Path) -> None:
    states = _two_rank_states()
    convert_checkpoint(_with_ranks(trainer_checkpoint, tmp_path / "two.pt", states), tmp_path / "hf",
                       ConvertOptions(to="hf"))
    draws = []
    for rank, state in enumerate(states):
        expected = _draws_after_ckptkit_restore(state)
        assert _draws_after_trainer_restore(tmp_path / "hf", world_size=2, rank=rank) == expected
        draws.append(expected)
    assert draws[0] != draws[1]


def test_a_single_process_with_two_cuda_devices_keeps_device_0s_state_and_says_so(
        trainer_checkpoint: Path, tmp_path: Path) -> None:
    state = _two_rank_states()[0]
    source = _with_ranks(trainer_checkpoint, tmp_path / "one.pt", [state])
    result = convert_checkpoint(source, tmp_path / "hf", ConvertOptions(to="hf"))
    written = torch.load(tmp_path / "hf" / "rng_state.pth", weights_only=True)
    _assert_file_holds_the_state(written, state, state["cuda"][0])   # set_rng_state takes one tensor
    assert ("rng (0): 2 cuda device states saved; a single-process Trainer restores one, so only device 0's "
            "is written") in result.notes


def test_a_rank_without_numpy_state_leaves_every_rng_file_out_and_names_why(
        trainer_checkpoint: Path, tmp_path: Path) -> None:
    states = _two_rank_states()
    states[1]["numpy"] = None
    result = convert_checkpoint(_with_ranks(trainer_checkpoint, tmp_path / "two.pt", states), tmp_path / "hf",
                                ConvertOptions(to="hf"))
    assert not [p.name for p in result.files if p.name.startswith("rng")]
    assert ("rng (rng_state): rank 1 has no numpy state (numpy was not installed when it was saved) and Trainer's "
            "_load_rng_state requires one; no rng_state file written, so a Trainer resumed from the folder keeps "
            "its fresh generators") in result.dropped


def test_an_rng_layout_ckptkit_cannot_map_is_named_under_dropped_on_the_command_line(tmp_path: Path) -> None:
    rng_state = {"seed": 7, "generator": torch.zeros(4, dtype=torch.uint8)}
    torch.save({"model": {"w": torch.ones(2)}, "rng_state": rng_state}, tmp_path / "a.pth")
    done = CliRunner().invoke(main, ["convert", str(tmp_path / "a.pth"), str(tmp_path / "hf"), "--to", "hf"])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["model.safetensors"]
    assert ("dropped   rng (rng_state): keys seed, generator are not a layout ckptkit can map to Trainer's "
            "(ckptkit's trainers, Trainer's rng_state*.pth, accelerate's random_states_*.pkl)") in done.output
    assert f"note      {TRAINING_ARGS_NOTE}" in done.output


def test_an_accelerate_folders_random_states_become_trainers_rng_state_pth(tmp_path: Path) -> None:
    from ckptkit.formats import open_checkpoint

    result = convert_checkpoint(ACCELERATE, tmp_path / "hf", ConvertOptions(to="hf"))
    written = torch.load(tmp_path / "hf" / "rng_state.pth", weights_only=True)
    saved = open_checkpoint(ACCELERATE).rng["random_states_0.pkl"]
    assert written["python"] == saved["random_state"]
    assert written["numpy"] == ("MT19937", saved["numpy_random_seed"][1].tolist(), *saved["numpy_random_seed"][2:])
    assert written["cpu"].numpy().tobytes() == bytes(saved["torch_manual_seed"].read_bytes())
    assert any(n.startswith("rng (random_states_0.pkl): accelerate's step counter") for n in result.notes)
    _trainer_restore(tmp_path / "hf", world_size=1, rank=0)
    assert random.getstate() == saved["random_state"]
    assert np.random.get_state()[1].tolist() == saved["numpy_random_seed"][1].tolist()
    assert torch.get_rng_state().numpy().tobytes() == bytes(saved["torch_manual_seed"].read_bytes())


def test_the_training_args_note_is_given_once_and_only_for_a_training_folder(
        trainer_checkpoint: Path, tmp_path: Path) -> None:
    full = convert_checkpoint(trainer_checkpoint, tmp_path / "full", ConvertOptions(to="hf"))
    assert full.notes.count(TRAINING_ARGS_NOTE) == 1
    assert not (tmp_path / "full" / "training_args.bin").exists()
    assert any(n.startswith("trainer_state.json written from the source's progress") for n in full.notes)
    weights = convert_checkpoint(trainer_checkpoint, tmp_path / "w", ConvertOptions(to="hf", weights_only=True))
    assert TRAINING_ARGS_NOTE not in weights.notes
