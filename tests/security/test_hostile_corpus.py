"""One test per attack technique: the verdict names the call and its arguments, nothing runs.

Through the library (`safe_loads`, `open_checkpoint`) and through the CLI (`validate`: exit 1 for
a payload that reads to the end, exit 2 with the call named for one that stops early).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckptkit.cli import main
from ckptkit.core.errors import CkptkitError
from ckptkit.formats import open_checkpoint
from ckptkit.storage.safe_pickle import PARTIAL_ATTR, safe_loads
from tests.security.corpus import containers, hostile, hostile_structures

MARKER = Path("/nonexistent-ckptkit-marker")
TECHNIQUES = sorted(hostile(MARKER))
CONTAINERS = sorted(containers(MARKER))
STRUCTURES = sorted(hostile_structures())


def _dangerous_calls(data: bytes) -> list[str]:
    """The dangerous verdicts, read to the end or, for a pickle that stops early, before the stop."""
    try:
        globals_ = safe_loads(data).globals
    except Exception as exc:   # fail closed: the error carries what was seen before the stop
        globals_ = getattr(exc, PARTIAL_ATTR, [])
    return [g.call or g.qualified_name for g in globals_ if g.kind == "dangerous"]


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_each_hostile_technique_is_named_as_dangerous_with_its_call(tmp_path: Path, technique: str) -> None:
    marker = tmp_path / "MARKER"
    data, named = hostile(marker)[technique]
    calls = _dangerous_calls(data)
    assert any(named in c for c in calls), calls
    assert not marker.exists()


@pytest.mark.parametrize("technique", CONTAINERS)
def test_a_payload_inside_each_container_is_found_and_validate_exits_1(tmp_path: Path, technique: str) -> None:
    marker = tmp_path / "MARKER"
    name, data = containers(marker)[technique]
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / name
    path.write_bytes(data)
    ckpt = open_checkpoint(path)
    [finding] = [f for f in ckpt.findings if f.code == "security.dangerous-global"]
    assert f"would call os.system('touch {marker}') when loaded" in finding.message
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1 and "security.dangerous-global" in result.output
    assert not marker.exists()


def test_a_payload_followed_by_damage_is_an_error_that_names_the_call(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    data, _ = hostile(marker)["payload followed by garbage"]
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / "state.pkl"
    path.write_bytes(data)
    with pytest.raises(CkptkitError) as info:
        open_checkpoint(path)
    assert f"it could not be verified, and before that point it would call os.system('touch {marker}')" \
        in str(info.value)
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 2 and "could not be verified" in result.output and "Traceback" not in result.output


def test_a_damaged_pickle_without_calls_says_it_could_not_be_verified(tmp_path: Path) -> None:
    path = tmp_path / "state.pkl"
    path.write_bytes(b"\x80\x02}q\x00X\x05\x00\x00\x00ep")
    with pytest.raises(CkptkitError, match=r"pickle is damaged: .* \(so it could not be verified as safe to load\)"):
        open_checkpoint(path)


@pytest.mark.parametrize("technique", STRUCTURES)
def test_each_hostile_structure_is_refused_with_one_line_naming_the_limit(tmp_path: Path, technique: str) -> None:
    data, limit = hostile_structures()[technique]
    path = tmp_path / "state.pkl"
    path.write_bytes(data)
    with pytest.raises(CkptkitError) as info:
        open_checkpoint(path)
    message = str(info.value)
    assert limit in message and "\n" not in message and message.startswith(str(path))


def _inject(pickle_bytes: bytes, marker: Path) -> bytes:
    """The same pickle, with a payload called and popped just before STOP: pickle.load runs it and
    still returns the original object, so the file keeps working for its reader."""
    from tests.security.corpus import call, g, s
    assert pickle_bytes.endswith(b".")
    return pickle_bytes[:-1] + call(g("os", "system"), s(f"touch {marker}")) + b"0."


def _rezip(src: Path, dst: Path, marker: Path) -> None:
    import zipfile
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info.filename, _inject(data, marker) if info.filename.endswith("data.pkl") else data)


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "real"


@pytest.mark.parametrize("member", ["training_args.bin", "optimizer.pt", "rng_state.pth"])
def test_a_payload_in_a_member_of_an_hf_trainer_folder_is_named(tmp_path: Path, member: str) -> None:
    import shutil
    marker = tmp_path / "MARKER"
    folder = tmp_path / "checkpoint-4"
    shutil.copytree(FIXTURES / "hf_full" / "checkpoint-4", folder)
    _rezip(FIXTURES / "hf_full" / "checkpoint-4" / member, folder / member, marker)
    result = CliRunner().invoke(main, ["validate", str(folder), "--json"])
    assert result.exit_code == 1, result.output
    [finding] = [f for f in json.loads(result.output)["findings"] if f["code"] == "security.dangerous-global"]
    assert finding["where"] == f"checkpoint-4/{member}"
    assert finding["message"].startswith(f"the pickle would call os.system('touch {marker}') when loaded")
    assert not marker.exists()


def test_a_payload_in_a_dcp_metadata_file_is_named_even_under_a_dcp_name(tmp_path: Path) -> None:
    import shutil

    from tests.security.corpus import call, g, s
    marker = tmp_path / "MARKER"
    folder = tmp_path / "dcp"
    shutil.copytree(FIXTURES / "dcp", folder)
    meta = (folder / ".metadata").read_bytes()
    payload = call(g("torch.distributed.checkpoint.format_utils", "torch_save_to_dcp"), s(str(marker)), s("x"))
    (folder / ".metadata").write_bytes(meta[:-1] + payload + b"0.")
    ckpt = open_checkpoint(folder)
    [finding] = [f for f in ckpt.findings if f.code == "security.dangerous-global"]
    assert "would call torch.distributed.checkpoint.format_utils.torch_save_to_dcp(" in finding.message


def test_a_hostile_sibling_in_a_run_folder_is_listed_as_broken_naming_the_limit(tmp_path: Path) -> None:
    import shutil
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURES / "lightning" / "last.ckpt", run / "epoch1.ckpt")
    (run / "checkpoint_2.pt").write_bytes(hostile_structures()["memo DAG of 2**63 paths"][0])
    (run / "checkpoint_3.pt").write_bytes(hostile_structures()["dict keys that all hash alike"][0])
    result = CliRunner().invoke(main, ["ls", str(run), "--json"])
    health = {c["path"]: c["health"] for c in json.loads(result.output)["checkpoints"]}
    assert health["epoch1.ckpt"]["status"] == "ok"
    assert health["checkpoint_2.pt"]["status"] == "broken"
    assert "(tree-size limit)" in health["checkpoint_2.pt"]["reason"]
    assert health["checkpoint_3.pt"]["status"] == "broken"
    assert "hash-collision limit" in health["checkpoint_3.pt"]["reason"]
