"""`ckptkit inspect` through click's CliRunner and as a real process: output, JSON, exit codes."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from ckptkit.cli import main
from scripts.make_seed_samples import write_samples

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_samples(tmp_path_factory.mktemp("seeds"))


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(main, ["inspect", *args])


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CKPTKIT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "ckptkit", "inspect", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_training_state_progress_is_shown_in_plain_words(samples: dict[str, Path]) -> None:
    result = _invoke(str(samples["training_state.pth"]))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "  format    torch-zip" in lines
    assert ("  layout    training-state: EnStack training_state.pth (epoch 1-based, step with 0 = end of epoch, "
            "total_batches)") in lines
    assert "  progress  epoch 1 INCOMPLETE: 1000/1270 batches (78.7%)" in lines
    assert "            steps_per_epoch: key 'total_batches' = 1270" in lines
    assert "  AdamW, 1 param groups, 4 state entries, step 2" in lines
    assert "  no findings: only known-safe globals" in lines
    assert result.stderr == ""


def test_experiment_checkpoint_shows_config_fields_metrics_and_the_pickled_class_warning(
        samples: dict[str, Path]) -> None:
    result = _invoke(str(samples["best_model.pt"]))
    assert result.exit_code == 0
    out = result.stdout
    assert "  progress  in epoch 1 (boundary unknown), global step 500/2000" in out
    assert "  4 tensors, 212 parameters, 848 B, float32 x4" in out
    assert "  max_steps: 2000" in out and "  save_interval: 500" in out
    assert "best_val_loss  0.3961" in out
    assert "security.pickled-class" in out and "scripts.make_seed_samples.ExperimentConfig" in out


def test_tensors_flag_lists_every_model_tensor(samples: dict[str, Path]) -> None:
    out = _invoke(str(samples["checkpoint-recent.pth"]), "--tensors").stdout
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("0.", "2."))]
    assert rows == [["0.weight", "float32", "16x8", "128"], ["0.bias", "float32", "16", "16"],
                    ["2.weight", "float32", "4x16", "64"], ["2.bias", "float32", "4", "4"]]


# The --json schema (version 1): top-level key -> JSON type(s). README documents the same table.
JSON_SCHEMA: dict[str, tuple[type, ...]] = {
    "schema": (int,), "path": (str,), "format": (str,), "family": (str,), "size_bytes": (int,),
    "progress": (dict,), "model": (dict, type(None)), "optimizer": (dict, type(None)),
    "scheduler": (dict, type(None)), "scaler": (dict, type(None)), "rng": (list, type(None)),
    "metrics": (dict,), "histories": (list,), "config": (dict, list, str, int, float, type(None)),
    "other_keys": (dict,), "metadata": (dict,), "findings": (list,), "members": (list,), "chunks": (dict,),
}
PROGRESS_KEYS = ["epochs_completed", "step_in_epoch", "steps_per_epoch", "global_step", "epoch_complete",
                 "epoch_float", "max_steps", "training_finished", "summary", "sources", "notes", "stored", "resume"]


def test_json_output_has_the_documented_schema(samples: dict[str, Path]) -> None:
    result = _invoke(str(samples["checkpoint_step_1000.pt"]), "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert list(data) == list(JSON_SCHEMA)
    for key, types in JSON_SCHEMA.items():
        assert isinstance(data[key], types), key
    assert data["schema"] == 1
    assert list(data["progress"]) == PROGRESS_KEYS
    assert data["progress"]["summary"] == "in epoch 1 (boundary unknown), global step 1000/2000"
    assert list(data["model"]) == ["source", "tensors", "parameters", "bytes", "dtypes", "modules", "tensor_list",
                                   "ties", "global_parameters"]
    assert list(data["optimizer"]) == ["source", "kind", "groups", "state_entries", "step"]
    assert data["optimizer"]["groups"][0] == {"index": 0, "params": 4, "lr": 0.001, "weight_decay": 0.01,
                                              "betas": [0.9, 0.999], "momentum": None}
    assert data["histories"][0] == {"name": "train_history", "length": 10, "last": 0.1, "best": 0.1}
    assert list(data["findings"][0]) == ["code", "severity", "where", "message", "fix"]
    assert (data["members"], data["chunks"]) == ([], {})   # single files; folders list their member files


def test_json_output_of_the_legacy_sample_names_its_format(samples: dict[str, Path]) -> None:
    data = json.loads(_invoke(str(samples["legacy"]), "--json").stdout)
    assert (data["format"], data["family"], data["progress"]["epochs_completed"]) == ("torch-legacy", "recsys", 5)


# ---------------------------------------------------------------- bad input

def _truncated(tmp: Path, keep: float) -> Path:
    path = tmp / f"truncated_{int(keep * 1000)}.pt"
    torch.save({"model_state_dict": torch.nn.Linear(32, 32).state_dict(), "epoch": 1}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _flipped_pickle(tmp: Path) -> Path:
    path = tmp / "flipped.pt"
    torch.save({"model_state_dict": torch.nn.Linear(4, 4).state_dict(), "epoch": 1}, path)
    info = zipfile.ZipFile(path).getinfo("flipped/data.pkl")
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 25] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """{case: (path, what the one-line message must say after '<path>: ')}."""
    empty, text, folder = tmp / "empty.pt", tmp / "notes.pt", tmp / "a_folder"
    empty.write_bytes(b"")
    text.write_text("epoch: 3\nloss: 0.5\n")
    folder.mkdir(exist_ok=True)
    truncated = "zip archive is truncated or damaged (no end-of-central-directory record): " \
                "the save was probably interrupted"
    cases = {
        "empty": (empty, "empty file (0 bytes): the save was interrupted before anything was written"),
        "text": (text, "not a checkpoint ckptkit knows (a text file starting 'epoch: 3')"),
        "folder": (folder, "a folder, but no checkpoint format ckptkit knows"),
        "missing": (tmp / "nope.pt", "no such file or folder"),
        "flipped": (_flipped_pickle(tmp), "flipped/data.pkl is damaged: Bad CRC-32 for file 'flipped/data.pkl'"),
    }
    # Files taken for checkpoints, named by what they are (their first bytes as their tools write them).
    for name, head, what in (("model.gguf", b"GGUF\x03\x00\x00\x00", "a GGUF model file of llama.cpp"),
                             ("model.h5", b"\x89HDF\r\n\x1a\n", "an HDF5 file, as Keras and TensorFlow save"),
                             ("ckpt.pt.gz", gzip.compress(b"PK\x03\x04"), "a gzip archive: unpack it first")):
        (tmp / name).write_bytes(head + bytes(64))
        cases[name] = (tmp / name, f"not a checkpoint ckptkit knows ({what}")
    for keep in (0.05, 0.5, 0.95, 0.999):
        cases[f"truncated-{keep}"] = (_truncated(tmp, keep), truncated)
    return cases


BAD_CASES = ["empty", "text", "folder", "missing", "flipped", "truncated-0.05", "truncated-0.5",
             "truncated-0.95", "truncated-0.999", "model.gguf", "model.h5", "ckpt.pt.gz"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gives_one_line_naming_the_file_and_exit_2(tmp_path: Path, case: str) -> None:
    path, problem = _bad_inputs(tmp_path)[case]
    result = _invoke(str(path))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"ckptkit: error: {path}: {problem}")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_bad_input_as_a_real_process_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    for case in BAD_CASES:
        path, problem = _bad_inputs(tmp_path)[case]
        proc = _run(str(path))
        assert (proc.returncode, proc.stdout) == (2, ""), case
        assert proc.stderr.startswith(f"ckptkit: error: {path}: {problem}"), case
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, case


# ---------------------------------------------------------------- malicious pickles

class _Payload:
    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, tuple[_Payload, str]]:
    command = f"touch {marker}"
    return {
        "posix.system": (_Payload(os.system, command), "posix.system"),
        "builtins.eval": (_Payload(eval, f"__import__('os').system({command!r})"), "builtins.eval"),
        "builtins.exec": (_Payload(exec, f"import os; os.system({command!r})"), "builtins.exec"),
        "subprocess.Popen": (_Payload(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
    }


def _malicious(tmp: Path, container: str, attack: str, marker: Path) -> tuple[Path, str]:
    payload, qualified = _payloads(marker)[attack]
    state = {"model_state_dict": {"w": torch.ones(2)}, "epoch": 4, "hook": payload}
    path = tmp / f"evil.{container}"
    if container == "pt":
        torch.save(state, path)
    else:
        del state["model_state_dict"]
        path.write_bytes(pickle.dumps(state, protocol=4))
    return path, qualified


@pytest.mark.parametrize("container", ["pt", "pkl"])
@pytest.mark.parametrize("attack", ["posix.system", "builtins.eval", "builtins.exec", "subprocess.Popen"])
def test_malicious_pickle_is_inspected_fully_runs_nothing_and_exits_2(
        tmp_path: Path, container: str, attack: str) -> None:
    marker = tmp_path / "MARKER"
    path, qualified = _malicious(tmp_path, container, attack, marker)
    result = _invoke(str(path))
    assert not marker.exists()
    assert result.exit_code == 2
    assert f"  format    {'torch-zip' if container == 'pt' else 'pickle'}" in result.stdout
    assert "security.dangerous-global" in result.stdout
    assert f"the pickle would call {qualified}(" in " ".join(result.stdout.split())
    assert result.stderr == (f"ckptkit: error: {path}: its pickle would run code if loaded with torch.load("
                             "weights_only=False) (1 dangerous global(s), see Security); ckptkit ran none of it\n")


def test_os_system_spelled_as_an_attacker_would_is_blocked_in_a_real_process(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "checkpoint-recent.pth"
    path.write_bytes(b"\x80\x02cos\nsystem\nX" + len(f"touch {marker}").to_bytes(4, "little")
                     + f"touch {marker}".encode() + b"\x85R.")
    proc = _run(str(path), "--json", cwd=tmp_path)
    assert not marker.exists()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    findings = json.loads(proc.stdout)["findings"]
    assert [(f["code"], f["severity"]) for f in findings] == [("security.dangerous-global", "error")]
    assert findings[0]["message"].startswith(f"the pickle would call os.system('touch {marker}') when loaded")


@pytest.mark.parametrize("container", ["pt", "pkl"])
def test_malicious_checkpoint_as_a_real_process_creates_no_marker(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "MARKER"
    path, _ = _malicious(tmp_path, container, "posix.system", marker)
    proc = _run(str(path), cwd=tmp_path)
    assert not marker.exists()
    assert proc.returncode == 2 and "security.dangerous-global" in proc.stdout
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- laziness

def test_inspect_process_never_imports_torch_or_numpy(samples: dict[str, Path], tmp_path: Path) -> None:
    rng_file = tmp_path / "rng_state.pth"
    import numpy as np
    torch.save({"python": (3, (1, 2), None), "numpy": np.random.RandomState(0).get_state(),
                "cpu": torch.get_rng_state()}, rng_file)
    code = ("import sys\nfrom ckptkit.cli import main\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n        main(['inspect', path])\n    except SystemExit as e:\n"
            "        assert e.code == 0, (path, e.code)\n"
            "print('MODULES', 'torch' in sys.modules, 'numpy' in sys.modules, 'safetensors' in sys.modules)\n")
    paths = [str(p) for p in samples.values()] + [str(rng_file)]
    st_path = samples["training_state.pth"].parent / "model.safetensors"
    proc = subprocess.run([sys.executable, "-c", code, *paths, str(st_path)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "MODULES False False False"


def test_a_model_of_thousands_of_modules_shows_the_first_and_last_rows_and_json_keeps_all(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "moe.safetensors"
    save_file({f"layers.{i}.experts.{j}.w": torch.zeros(2) for i in range(300) for j in range(2)}, str(path))
    text = _invoke(str(path)).stdout
    shown = [line.split()[0] for line in text.splitlines() if line.startswith("  layers.")]
    assert len(shown) == 25 and "  ... 275 more modules" in text
    assert "  (300 modules: --json lists every one, --tensors every tensor)" in text
    # safetensors stores names sorted: "layers.0", "layers.1", "layers.10", ...
    assert shown[:3] == ["layers.0", "layers.1", "layers.10"] and shown[-1] == "layers.99"
    data = json.loads(_invoke(str(path), "--json").stdout)["model"]
    assert len(data["modules"]) == 300 and len(data["tensor_list"]) == 600
    assert data["modules"][0] == {"prefix": "layers.0", "tensors": 2, "parameters": 4, "dtypes": "float32"}
    assert data["tensor_list"][0] == {"name": "layers.0.experts.0.w", "dtype": "float32", "shape": [2],
                                      "parameters": 2}


def test_a_model_of_few_modules_shows_every_row(samples: dict[str, Path]) -> None:
    text = _invoke(str(samples["checkpoint_step_1000.pt"])).stdout
    assert "more modules" not in text and "modules: --json" not in text
