"""Every dtype torch can save is read, validated, diffed and converted as torch and safetensors
themselves read it.

Checkpoints of newer dtypes are real: FP8 training on AMD GPUs saves float8_e4m3fnuz, MX
formats keep float8_e8m0fnu block scales, NVFP4/MXFP4 weights are float4_e2m1fn_x2 (safetensors
"F4", which counts the 4-bit values: F4 [4, 8] is float4_e2m1fn_x2 [4, 4]). ckptkit once called
such files damaged ("tensor of dtype <property object ...>"), wrote .pt files naming storage
classes torch does not have (torch.Float8_e4m3fnStorage: torch.load failed on every float8 or
uint16 tensor converted from safetensors) and safetensors files with a "C128" dtype safetensors
refuses; and said "verified" for both, because only its own reader read them back. Here every
verdict is held to torch.load and safetensors' load_file.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save, save_file

from ckptkit.cli import main
from ckptkit.core.dtypes import BY_NAME, BY_SAFETENSORS, BY_STORAGE_CLASS
from ckptkit.formats import open_checkpoint


def _savable() -> list[torch.dtype]:
    """The dtypes of this torch that torch.save writes (uint1..7 and int1..7 it refuses)."""
    dtypes = {getattr(torch, n) for n in dir(torch) if isinstance(getattr(torch, n), torch.dtype)}
    out = []
    for d in sorted(dtypes, key=str):
        try:
            torch.save(_sample(d), io.BytesIO())
        except Exception:        # "dtype torch.uint4 is not recognized"
            continue
        out.append(d)
    return out


QUANTIZED = {torch.qint8, torch.quint8, torch.qint32, torch.quint4x2, torch.quint2x4}


def _sample(dtype: torch.dtype) -> torch.Tensor:
    """A healthy 3x4 tensor of `dtype`: values torch casts to it, or distinct bytes where torch
    has no cast (float4_e2m1fn_x2, bits*)."""
    values = torch.linspace(0.25, 4.0, 12).reshape(3, 4)
    if dtype in QUANTIZED:
        return torch.quantize_per_tensor(values, 0.1, 3, dtype)
    if dtype == torch.bool:
        return values > 2
    try:
        return values.to(dtype)
    except (RuntimeError, TypeError):
        raw = torch.arange(3 * 4 * dtype.itemsize, dtype=torch.uint8) * 7 % 251
        return raw.view(dtype).reshape(3, 4)


def _bytes(t: torch.Tensor) -> bytes:
    if t.is_quantized:
        return t.int_repr().contiguous().view(torch.uint8).numpy().tobytes()
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def _safetensors_can_hold(dtype: torch.dtype) -> bool:
    try:
        save({"w": _sample(dtype)})
    except Exception:           # complex128, complex32, quantized, bits*
        return False
    return True


DTYPES = _savable()
IDS = [str(d).removeprefix("torch.") for d in DTYPES]
# Quantized tensors (deprecated by PyTorch) stay what their pickle says, a _rebuild_qtensor call
# on a typed storage: read as that, rewritten as that.
PLAIN = [d for d in DTYPES if d not in QUANTIZED]
PLAIN_IDS = [str(d).removeprefix("torch.") for d in PLAIN]
IN_SAFETENSORS = [d for d in DTYPES if _safetensors_can_hold(d)]


def test_ckptkit_knows_every_dtype_torch_saves() -> None:
    names = {str(d).removeprefix("torch.") for d in DTYPES}
    assert {"float8_e4m3fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "uint16"} <= names
    assert names - set(BY_NAME) == set()


def test_every_storage_class_ckptkit_reads_or_writes_is_one_torch_has() -> None:
    """A pickle naming torch.Float8_e4m3fnStorage does not load: torch has no such class."""
    for name in BY_STORAGE_CLASS:
        assert hasattr(torch, name), name
    torch_has = {str(d).removeprefix("torch."): name for d, name in torch.storage._dtype_to_storage_type_map().items()}
    assert {d.name: d.storage_class for d in BY_NAME.values() if d.storage_class} == torch_has


def test_every_safetensors_code_is_one_safetensors_loads() -> None:
    codes = {}
    for d in IN_SAFETENSORS:
        raw = save({"w": _sample(d)})
        header = json.loads(raw[8: 8 + int.from_bytes(raw[:8], "little")])
        codes[header["w"]["dtype"]] = str(d).removeprefix("torch.")
    assert {code: d.name for code, d in BY_SAFETENSORS.items()} == codes


@pytest.mark.parametrize("dtype", PLAIN, ids=PLAIN_IDS)
def test_a_pth_of_any_dtype_is_read_as_torch_reads_it_and_validates_clean(tmp_path: Path, dtype: torch.dtype) -> None:
    t = _sample(dtype)
    torch.save({"w": t, "w_t": t.t()}, tmp_path / "x.pt")
    read = open_checkpoint(tmp_path / "x.pt").model
    assert read is not None
    assert (read["w"].dtype.name, read["w"].shape) == (str(dtype).removeprefix("torch."), (3, 4))
    assert (read["w_t"].shape, read["w_t"].stride) == ((4, 3), tuple(t.t().stride()))
    assert bytes(read["w"].read_bytes()) == _bytes(t)
    result = CliRunner().invoke(main, ["validate", "--deep", "--no-run", "--json", str(tmp_path / "x.pt")])
    assert result.exit_code == 0, result.output
    assert '"findings": []' in result.output


@pytest.mark.parametrize("dtype", IN_SAFETENSORS, ids=str)
def test_a_safetensors_of_any_dtype_reads_with_torchs_shape_and_converts_to_a_pt_torch_loads(
        tmp_path: Path, dtype: torch.dtype) -> None:
    t = _sample(dtype)
    save_file({"w": t}, tmp_path / "x.safetensors")
    loaded = load_file(tmp_path / "x.safetensors")["w"]
    read = open_checkpoint(tmp_path / "x.safetensors").model
    assert read is not None
    assert (read["w"].dtype.name, read["w"].shape) == (str(loaded.dtype).removeprefix("torch."), tuple(loaded.shape))
    result = CliRunner().invoke(main, ["validate", "--deep", "--no-run", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "x.safetensors"), str(tmp_path / "back.pt")])
    assert result.exit_code == 0, result.output
    back = torch.load(tmp_path / "back.pt", weights_only=True)["w"]
    assert (back.dtype, back.shape, _bytes(back)) == (dtype, t.shape, _bytes(t))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_converting_a_pt_of_any_dtype_gives_files_their_own_library_loads_or_a_clear_refusal(
        tmp_path: Path, dtype: torch.dtype) -> None:
    t = _sample(dtype)
    torch.save({"w": t, "w_t": t.t()}, tmp_path / "x.pt")
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(tmp_path / "x.pt"), str(tmp_path / "copy.pt")])
    assert result.exit_code == 0, result.output
    copy = torch.load(tmp_path / "copy.pt", weights_only=True)
    assert (copy["w"].dtype, _bytes(copy["w"]), _bytes(copy["w_t"])) == (dtype, _bytes(t), _bytes(t.t()))
    if dtype in QUANTIZED:
        assert (copy["w"].q_scale(), copy["w"].q_zero_point()) == (t.q_scale(), t.q_zero_point())
        result = CliRunner().invoke(main, ["validate", str(tmp_path / "x.pt")])
        assert result.exit_code == 0 and "clean: no findings" in result.output, result.output
    result = runner.invoke(main, ["convert", str(tmp_path / "x.pt"), str(tmp_path / "x.safetensors")])
    if dtype in IN_SAFETENSORS:
        assert result.exit_code == 0, result.output
        got = load_file(tmp_path / "x.safetensors")
        assert (got["w"].dtype, got["w"].shape, _bytes(got["w"])) == (dtype, t.shape, _bytes(t))
        assert _bytes(got["w_t"]) == _bytes(t.t())
    else:
        assert result.exit_code == 2, result.output
        reason = "nothing to convert" if dtype in QUANTIZED else "which safetensors cannot hold"
        assert reason in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("code", ["F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0"])
def test_a_nan_byte_of_a_float8_format_is_an_error_under_deep(tmp_path: Path, code: str) -> None:
    """fnuz formats have one NaN, the byte 0x80 (no -0); e8m0 has 0xFF. Neither has Inf."""
    dtype = BY_SAFETENSORS[code]
    nan = 0x80 if "FNUZ" in code else 0xFF
    t = torch.tensor([0x38, nan, 0x40, 0x7F], dtype=torch.uint8).view(getattr(torch, dtype.name))
    assert torch.isnan(t.float()).tolist() == [False, True, False, False]
    save_file({"w": t, "ok": t[[0, 2]].clone()}, tmp_path / "x.safetensors")
    result = CliRunner().invoke(main, ["validate", "--deep", "--no-run", "--json", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 1, result.output
    assert '"deep.non-finite"' in result.output and "found 1 NaN and 0 Inf among 4 values" in result.output
    assert '"x.safetensors: w"' in result.output and "x.safetensors: ok" not in result.output


def test_an_f4_tensor_of_an_odd_last_dimension_is_named_not_called_damaged(tmp_path: Path) -> None:
    header = b'{"w":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}}'
    (tmp_path / "odd.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 3)
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "odd.safetensors")])
    assert result.exit_code == 2
    assert "last dimension must be a multiple of 2" in result.output and "damaged" not in result.output


@pytest.mark.parametrize("code, words", [("F6_E2M3", "torch has no dtype for"), ("C128", "is not a safetensors dtype")])
def test_a_safetensors_dtype_torch_cannot_load_gets_a_one_line_reason(tmp_path: Path, code: str, words: str) -> None:
    header = b'{"w":{"dtype":"' + code.encode() + b'","shape":[4],"data_offsets":[0,3]}}'
    (tmp_path / "x.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 3)
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 2
    assert words in result.output and len(result.output.strip().splitlines()) == 1
