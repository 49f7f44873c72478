"""`ckptkit convert` on the command line: exit codes, one-line errors, verification failures."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from ckptkit import conversion
from ckptkit.cli import main
from ckptkit.cli.convert_command import parse_size
from ckptkit.formats import safetensors_file, torch_zip


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["convert", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def model_pth(tmp_path: Path) -> Path:
    emb = torch.randn(8, 4)
    torch.save({"model_state_dict": {"embed.weight": emb, "lm_head.weight": emb, "norm.bias": torch.zeros(4)},
                "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
                "epoch": 2}, tmp_path / "model.pth")
    return tmp_path / "model.pth"


def test_convert_to_safetensors_reports_the_tied_weight_and_the_dropped_optimizer(model_pth: Path) -> None:
    out = model_pth.with_name("model.safetensors")
    code, stdout, _ = _run(str(model_pth), str(out), "--weights-only", "--json")
    assert code == 0
    report = json.loads(stdout)
    assert report["aliases"] == {"lm_head.weight": "embed.weight"}
    assert report["dropped"] == ["optimizer (optimizer_state_dict)"]
    assert report["tensors"] == 2 and report["verified_tensors"] == 2
    assert sorted(load_file(out)) == ["embed.weight", "norm.bias"]


def test_convert_without_weights_only_exits_2_naming_the_file_and_the_fix(model_pth: Path) -> None:
    code, _, stderr = _run(str(model_pth), str(model_pth.with_name("m.safetensors")))
    assert code == 2
    assert stderr.startswith(f"ckptkit: error: {model_pth}: safetensors holds model tensors only")
    assert "--weights-only" in stderr
    assert not model_pth.with_name("m.safetensors").exists()


def _corrupting_safetensors(write):
    """A writer that does its job, then flips the last byte it wrote (a disk that lies)."""
    def corrupt(out, *args, **kwargs):
        result = write(out, *args, **kwargs)
        out.seek(-1, 2)
        out.write(b"\xff")     # the last tensor holds randn floats: its last byte is never 0xff
        return result
    return corrupt


def _corrupting_storage_records(write_member):
    """Torch's zip writer with the last byte of every storage record flipped once it is on disk
    (whether the record was streamed or copied by the kernel)."""
    def corrupt(zf, out, name, chunks, length, **kwargs):
        result = write_member(zf, out, name, chunks, length, **kwargs)
        if "/data/" in name and length:
            out.flush()
            end = out.tell()
            fd = os.open(out.name, os.O_RDWR)   # `out` itself is write-only
            try:
                os.pwrite(fd, bytes([os.pread(fd, 1, end - 1)[0] ^ 0xFF]), end - 1)
            finally:
                os.close(fd)
        return result
    return corrupt


@pytest.mark.parametrize("target", ["model.safetensors", "model.pt"])
def test_a_verification_mismatch_deletes_the_output_and_exits_2(
        model_pth: Path, monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    corrupt = _corrupting_safetensors(safetensors_file.write_safetensors)
    monkeypatch.setattr(safetensors_file, "write_safetensors", corrupt)
    monkeypatch.setattr(conversion, "write_safetensors", corrupt)   # the name conversion writes through
    monkeypatch.setattr(torch_zip, "_write_member", _corrupting_storage_records(torch_zip._write_member))
    before = sorted(p.name for p in model_pth.parent.iterdir())
    code, _, stderr = _run(str(model_pth), str(model_pth.with_name(target)), "--weights-only")
    assert code == 2
    assert stderr.startswith(f"ckptkit: error: {model_pth.with_name(target)}: ")
    assert "bytes read back differ from the source's" in stderr
    assert sorted(p.name for p in model_pth.parent.iterdir()) == before   # no output, no temporary left


def test_an_existing_output_is_refused_with_exit_2_and_kept(model_pth: Path) -> None:
    out = model_pth.with_name("taken.safetensors")
    out.write_bytes(b"keep me")
    code, _, stderr = _run(str(model_pth), str(out), "--weights-only")
    assert code == 2 and "already exists; pass --force" in stderr
    assert out.read_bytes() == b"keep me"


def test_human_output_names_formats_counts_and_backup(model_pth: Path) -> None:
    out = model_pth.with_name("legacy-free.pt")
    out.write_bytes(b"old")
    code, stdout, _ = _run(str(model_pth), str(out), "--force", "--dtype", "fp16")
    assert code == 0
    assert "torch-zip -> torch-zip" in stdout
    assert "cast      3 floating tensors to float16" in stdout   # lm_head is embed: one storage, cast once
    assert f"backup    old output kept at {out}.bak" in stdout
    back = torch.load(out, weights_only=True)
    assert back["model_state_dict"]["lm_head.weight"].dtype == torch.float16


def test_unknown_target_name_is_a_one_line_error() -> None:
    code, _, stderr = _run("a.pth", "b.npz")
    assert code == 2
    assert stderr.strip() == ("ckptkit: error: b.npz: cannot tell the target format from the name: end it in "
                              ".safetensors or .pt/.pth, or pass --to (safetensors, pth, dcp, hf)")


@pytest.mark.parametrize("text,size", [("500MB", 500_000_000), ("2GB", 2_000_000_000), ("1GiB", 2 ** 30),
                                       ("4096", 4096), ("1.5kb", 1500)])
def test_shard_sizes_parse_in_hugging_face_units(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_bad_shard_size_is_a_usage_error() -> None:
    code, _, stderr = _run("a.pth", "out", "--max-shard-size", "lots")
    assert code == 2 and "--max-shard-size" in stderr


def test_a_missing_output_folder_is_a_one_line_error_naming_it(model_pth: Path) -> None:
    out = model_pth.parent / "no_such_dir" / "m.safetensors"
    code, _, stderr = _run(str(model_pth), str(out), "--weights-only")
    assert code == 2
    assert stderr.strip() == f"ckptkit: error: {out.parent}: folder does not exist; create it first"


def test_a_value_the_writer_cannot_rewrite_is_reported_against_the_source_file(tmp_path: Path) -> None:
    import numpy as np

    torch.save({"model": {"w": torch.ones(2)}, "mean": np.zeros(3)}, tmp_path / "np.pt")
    code, _, stderr = _run(str(tmp_path / "np.pt"), str(tmp_path / "out.pt"))
    assert code == 2
    assert stderr.startswith(f"ckptkit: error: {tmp_path / 'np.pt'}: rewriting a pickled numpy array")
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_to_dcp_writes_a_folder(model_pth: Path) -> None:
    out = model_pth.with_name("dcp_out")
    code, stdout, _ = _run(str(model_pth), str(out), "--to", "dcp", "--json")
    assert code == 0
    report = json.loads(stdout)
    assert report["target_format"] == "dcp" and report["verified_tensors"] == 3
    assert (out / ".metadata").is_file()


def test_to_hf_writes_model_and_optimizer_files_and_names_what_has_no_file(model_pth: Path) -> None:
    out = model_pth.with_name("hf_out")
    code, stdout, _ = _run(str(model_pth), str(out), "--to", "hf", "--json")
    assert code == 0
    report = json.loads(stdout)
    assert sorted(Path(f).name for f in report["files"]) == ["model.safetensors", "optimizer.pt"]
    assert report["dropped"] == ["other keys (epoch): an HF folder has no file for them"]
    assert sorted(load_file(out / "model.safetensors")) == ["embed.weight", "norm.bias"]


def test_pth_to_safetensors_and_back_shows_the_same_progress_in_ckptkit_inspect(model_pth: Path) -> None:
    def inspected(path: Path) -> dict[str, object]:
        result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    st, back = model_pth.with_name("m.safetensors"), model_pth.with_name("back.pth")
    assert _run(str(model_pth), str(st), "--weights-only")[0] == 0
    code, stdout, _ = _run(str(st), str(back))
    assert code == 0
    assert "note      restored from the safetensors __metadata__: progress as the recsys layout's counters " \
           "(epoch = 2)" in stdout
    before, after = inspected(model_pth), inspected(back)
    assert after["family"] == before["family"] == "recsys"
    fields = ("epochs_completed", "step_in_epoch", "global_step", "epoch_complete", "summary")
    assert [after["progress"][f] for f in fields] == [before["progress"][f] for f in fields] == \
           [2, None, None, True, "epoch 2 complete"]


def test_max_shard_size_is_refused_for_a_dcp_target_and_nothing_is_written(model_pth: Path) -> None:
    out = model_pth.with_name("dcp_sharded")
    code, _, stderr = _run(str(model_pth), str(out), "--to", "dcp", "--max-shard-size", "1KB")
    assert code == 2 and "needs --to safetensors or --to hf" in stderr
    assert not out.exists()
