"""ckptkit salvage: what survives a cut or an overwrite comes back bit for bit, nothing else does."""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from ckptkit.core.errors import CkptkitError
from ckptkit.salvage import salvage
from tests.run_builders import HF_FULL, REAL

OPTIMIZER = HF_FULL / "optimizer.pt"
LIGHTNING = REAL / "lightning" / "epoch=1-step=6.ckpt"
WEIGHTS = HF_FULL / "model.safetensors"
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def experiment_checkpoint(path: Path) -> Path:
    """run_experiment.py LM's dict, built the way its trainer saves it (model, AdamW after a step)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
                "global_step": 10, "epoch": 1, "best_val_loss": 0.3, "train_history": [1.0, 0.8],
                "val_history": [0.9]}, path)
    return path


def tensors_by_path(tree: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    out: dict[str, torch.Tensor] = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    for k, v in items:
        out.update(tensors_by_path(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def bits(t: torch.Tensor) -> bytes:
    return t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""


def data_pkl_span(original: Path) -> tuple[int, int]:
    """Bytes of the original from data.pkl's local header to the next member's."""
    with zipfile.ZipFile(original) as zf:
        offsets = sorted(i.header_offset for i in zf.infolist())
        start = next(i.header_offset for i in zf.infolist() if i.filename.endswith("/data.pkl"))
    return start, next(o for o in offsets if o > start)


def assert_only_originals(
    original: Path, damaged: Path, out: Path, must_salvage: bool = False
) -> dict[str, Any] | None:
    """Salvage `damaged`; every tensor it wrote equals `original`'s at the same path, bit for bit,
    and every tensor of the original is either recovered or named as lost. `must_salvage`: the
    damage spared data.pkl, so giving up (exit 2) is not an answer."""
    before = hashlib.sha256(damaged.read_bytes()).hexdigest()
    try:
        report = salvage(damaged, out)
    except CkptkitError:
        assert not must_salvage
        assert not out.exists()
        assert hashlib.sha256(damaged.read_bytes()).hexdigest() == before
        return None
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == before
    want = tensors_by_path(torch.load(original, weights_only=True))
    got = tensors_by_path(torch.load(out, weights_only=True))
    for name, t in got.items():
        assert name in want, f"{name} is not in the original"
        assert (t.dtype, t.shape, bits(t)) == (want[name].dtype, want[name].shape, bits(want[name])), name
    recovered = {r.name for r in report.recovered}
    lost = {x.name for x in report.lost}
    assert set(got) == recovered - {"data.pkl"}
    if "data.pkl" in recovered:
        assert set(want) == set(got) | lost
    assert report.complete == (not lost)
    return report.to_json()


@SLOW
@given(cut=st.floats(0.0, 1.0))
def test_a_cut_torch_zip_gives_back_exactly_the_records_before_the_cut(tmp_path_factory: Any, cut: float) -> None:
    tmp = tmp_path_factory.mktemp("cut")
    data = OPTIMIZER.read_bytes()
    damaged = tmp / "optimizer.pt"
    damaged.write_bytes(data[: int(len(data) * cut)])
    assert_only_originals(
        OPTIMIZER, damaged, tmp / "rescued.pt", must_salvage=int(len(data) * cut) >= data_pkl_span(OPTIMIZER)[1]
    )


@SLOW
@given(where=st.floats(0.0, 1.0), junk=st.binary(min_size=1, max_size=300),
       source=st.sampled_from([OPTIMIZER, LIGHTNING]))
def test_an_overwritten_torch_zip_never_passes_off_a_changed_tensor(tmp_path_factory: Any, where: float,
                                                                    junk: bytes, source: Path) -> None:
    tmp = tmp_path_factory.mktemp("over")
    data = bytearray(source.read_bytes())
    at = int((len(data) - 1) * where)
    data[at: at + len(junk)] = junk
    damaged = tmp / source.name
    damaged.write_bytes(bytes(data[: len(source.read_bytes())]))
    start, end = data_pkl_span(source)
    assert_only_originals(source, damaged, tmp / "rescued.ckpt", must_salvage=at + len(junk) <= start or at >= end)


def test_a_checkpoint_cut_in_its_optimizer_keeps_the_model_and_says_it_cannot_resume(tmp_path: Path) -> None:
    original = experiment_checkpoint(tmp_path / "checkpoint_step_10.pt")
    data = original.read_bytes()
    damaged = tmp_path / "cut.pt"
    damaged.write_bytes(data[: len(data) * 2 // 3])
    report = assert_only_originals(original, damaged, tmp_path / "rescued.pt")
    assert report is not None
    assert report["resume"]["model"] == "whole"
    assert report["resume"]["optimizer"].startswith("partial:")
    assert report["resume"]["counters"] == "recovered: 1 epoch completed (boundary unknown), global step 10"
    assert report["resume"]["resumable"] is False
    rescued = torch.load(tmp_path / "rescued.pt", weights_only=True)
    assert rescued["global_step"] == 10 and rescued["train_history"] == [1.0, 0.8]
    # A parameter whose moments are half there is dropped whole, never resumed half-empty.
    for entry in rescued["optimizer_state_dict"]["state"].values():
        assert set(entry) == {"step", "exp_avg", "exp_avg_sq"}
    # ckptkit's own writer puts CRC and sizes in the local headers (no data descriptors): cut
    # the rescued file in turn and salvage it again.
    again = tmp_path / "cut-again.pt"
    rescued_bytes = (tmp_path / "rescued.pt").read_bytes()
    again.write_bytes(rescued_bytes[: len(rescued_bytes) // 2])
    second = assert_only_originals(tmp_path / "rescued.pt", again, tmp_path / "rescued-again.pt", must_salvage=True)
    assert second is not None and second["lost"] and not second["complete"]


def test_an_intact_checkpoint_is_written_anew_with_every_tensor_byte_identical(tmp_path: Path) -> None:
    original = experiment_checkpoint(tmp_path / "a.pt")
    report = salvage(original, tmp_path / "b.pt")
    assert report.complete and report.resume.resumable
    _assert_same_tensors(torch.load(tmp_path / "b.pt", weights_only=True), torch.load(original, weights_only=True))


def test_a_damaged_end_record_with_every_record_intact_still_gives_a_file_torch_loads(tmp_path: Path) -> None:
    # Python's zipfile ignores the end record's disk numbers; torch's reader refuses "multidisk"
    # archives. No CRC covers those bytes, so salvage must not pass the file's own bytes on.
    original = experiment_checkpoint(tmp_path / "a.pt")
    data = bytearray(original.read_bytes())
    eocd = data.rindex(b"PK\x05\x06")
    data[eocd + 4] = 2          # "number of this disk"
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    report = salvage(damaged, tmp_path / "rescued.pt")
    assert report.complete
    _assert_same_tensors(torch.load(tmp_path / "rescued.pt", weights_only=True),
                         torch.load(original, weights_only=True))


def _assert_same_tensors(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert a.reshape(-1).view(torch.uint8).tolist() == b.reshape(-1).view(torch.uint8).tolist()
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            _assert_same_tensors(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same_tensors(x, y)
    else:
        assert a == b


def test_a_lost_data_pkl_is_named_from_another_checkpoint_of_the_run(tmp_path: Path) -> None:
    original = experiment_checkpoint(tmp_path / "checkpoint_step_10.pt")
    other = experiment_checkpoint(tmp_path / "checkpoint_step_5.pt")
    data = bytearray(original.read_bytes())
    at = data.find(b"data.pkl") + 60
    data[at: at + 40] = b"\xff" * 40
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(CkptkitError, match="--names-from OTHER"):
        salvage(damaged, tmp_path / "x.pt")
    report = salvage(damaged, tmp_path / "rescued.pt", names_from=other)
    assert [x.name for x in report.lost] == ["data.pkl"]
    assert report.resume.counters.startswith("taken from checkpoint_step_5.pt")
    assert not report.resume.resumable
    want = tensors_by_path(torch.load(original, weights_only=True))
    got = tensors_by_path(torch.load(tmp_path / "rescued.pt", weights_only=True))
    assert set(got) == set(want)
    assert all(bits(got[k]) == bits(want[k]) for k in want)


@SLOW
@given(cut=st.floats(0.0, 1.0))
def test_a_cut_safetensors_file_gives_back_every_complete_tensor(tmp_path_factory: Any, cut: float) -> None:
    tmp = tmp_path_factory.mktemp("st")
    data = WEIGHTS.read_bytes()
    damaged = tmp / "model.safetensors"
    damaged.write_bytes(data[: int(len(data) * cut)])
    out = tmp / "rescued.safetensors"
    try:
        report = salvage(damaged, out)
    except CkptkitError:
        assert not out.exists()
        return
    want, got = load_file(WEIGHTS), load_file(out)
    assert set(got) | {x.name for x in report.lost} == set(want)
    assert all(bits(got[k]) == bits(want[k]) for k in got)
    assert all(r.checked.startswith("unchecked") for r in report.recovered)


def test_a_folder_keeps_its_whole_members_and_salvages_the_cut_optimizer(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-4"
    shutil.copytree(HF_FULL, folder)
    opt = folder / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:50_000])
    report = salvage(folder, tmp_path / "rescued")
    assert not report.complete
    assert report.resume.model == "whole" and report.resume.counters == "recovered"
    assert report.resume.optimizer.startswith("partial:") and not report.resume.resumable
    out = tmp_path / "rescued"
    assert json.loads((out / "trainer_state.json").read_text()) == json.loads(
        (HF_FULL / "trainer_state.json").read_text()
    )
    assert (out / "model.safetensors").read_bytes() == (HF_FULL / "model.safetensors").read_bytes()
    torch.load(out / "optimizer.pt", weights_only=True)


def test_salvage_never_writes_over_its_input_or_an_existing_file(tmp_path: Path) -> None:
    original = experiment_checkpoint(tmp_path / "a.pt")
    with pytest.raises(CkptkitError, match="never replaces"):
        salvage(original, original)
    (tmp_path / "taken.pt").write_bytes(b"mine")
    with pytest.raises(CkptkitError, match="never replaces"):
        salvage(original, tmp_path / "taken.pt")
    assert (tmp_path / "taken.pt").read_bytes() == b"mine"


def test_a_folder_member_that_no_longer_reads_is_lost_never_copied(tmp_path: Path) -> None:
    folder = tmp_path / "accelerate"
    shutil.copytree(REAL / "accelerate", folder)
    rng = folder / "random_states_0.pkl"                      # accelerate writes it with torch.save
    rng.write_bytes(rng.read_bytes()[:100])                  # cut inside its data.pkl
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])   # its header length overwritten
    (folder / "sampler.pkl").write_bytes(pickle.dumps({"epoch": 3, "seen": list(range(50))}, protocol=2)[:40])
    (folder / "notes.txt").write_text("lr sweep 3")
    report = salvage(folder, tmp_path / "rescued")
    lost = {x.name: x.reason for x in report.all_lost()}
    assert set(lost) == {"random_states_0.pkl", "model.safetensors", "sampler.pkl"}
    assert "safetensors header is damaged" in lost["model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "rescued").iterdir()) == [
        "custom_checkpoint_0.pkl",
        "notes.txt",
        "optimizer.bin",
        "scheduler.bin",
    ]
    assert {r.name: r.checked for r in report.recovered} == {
        "notes.txt": "unchecked: copied as it is (no format ckptkit reads)"
    }
    assert all(m.complete for m in report.members)


def test_records_another_checkpoint_cannot_name_are_reported_lost(tmp_path: Path) -> None:
    original = experiment_checkpoint(tmp_path / "checkpoint_step_10.pt")
    other = tmp_path / "weights_only.pt"
    torch.save({"model_state_dict": torch.load(original, weights_only=True)["model_state_dict"]}, other)
    data = bytearray(original.read_bytes())
    at = data.find(b"data.pkl") + 60
    data[at: at + 40] = b"\xff" * 40
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    report = salvage(damaged, tmp_path / "rescued.pt", names_from=other)
    unnamed = [x.name for x in report.lost if x.name.startswith("(unnamed")]
    assert len(unnamed) == 12 and not report.complete     # AdamW's step, exp_avg, exp_avg_sq for 4 params
    got = tensors_by_path(torch.load(tmp_path / "rescued.pt", weights_only=True))
    want = tensors_by_path(torch.load(original, weights_only=True))
    assert sorted(got) == sorted(k for k in want if k.startswith("model_state_dict."))
    assert all(bits(got[k]) == bits(want[k]) for k in got)
