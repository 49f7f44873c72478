"""--dtype casts read each tensor's elements as the tensor's dtype, whatever its storage says.

torch saves tensors of newer dtypes (float8) on untyped byte storages, so the storage's own
dtype is uint8; a cast that read those bytes as uint8 numbers wrote 0.5 as 48.0 (and read back
"equal", because its verification derived the same wrong cast). Expected values here come from
torch's own `Tensor.to`, never from ckptkit.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save, torch_save_to_dcp

from ckptkit.conversion import ConvertOptions, convert_checkpoint

FLOAT8 = [torch.float8_e4m3fn, torch.float8_e5m2]
TARGETS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _source(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    base = torch.tensor([[0.5, 1.0, 2.0, -3.0], [0.25, -0.125, 4.0, 8.0], [6.0, -6.0, 0.0, 1.5]]).to(dtype)
    model = {"w": base, "w_t": base.t(), "row": base[1], "scalar": base[2, 3], "f32": torch.tensor([1.5, -2.25])}
    torch.save({"model_state_dict": model, "epoch": 3}, path)
    return model


def _load(out: Path, kind: str) -> dict[str, torch.Tensor]:
    if kind == "safetensors":
        return load_file(out)
    if kind == "dcp":
        dcp_to_torch_save(out, out.with_suffix(".back.pth"))
        return torch.load(out.with_suffix(".back.pth"), weights_only=True)
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("source_dtype", FLOAT8, ids=str)
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("kind", ["pth", "safetensors", "dcp"])
def test_a_float8_model_cast_by_dtype_holds_torchs_own_cast_of_each_element(
        tmp_path: Path, source_dtype: torch.dtype, target: str, kind: str) -> None:
    model = _source(tmp_path / "src.pth", source_dtype)
    out = tmp_path / ("out.safetensors" if kind == "safetensors" else "out_dcp" if kind == "dcp" else "out.pth")
    result = convert_checkpoint(tmp_path / "src.pth", out, ConvertOptions(weights_only=True, dtype=target,
                                                               to="dcp" if kind == "dcp" else None))
    got = _load(out, kind)
    for name, t in model.items():
        want = t.to(TARGETS[target])
        assert got[name].dtype == want.dtype, name
        assert torch.equal(got[name].float(), want.float()), (name, got[name], want)
    assert result.cast_tensors >= 1


def test_a_dcp_folder_with_float8_tensors_converts_to_pth_with_their_dtype_and_bytes(tmp_path: Path) -> None:
    base = torch.tensor([0.5, 1.0, -3.0, 448.0]).to(torch.float8_e4m3fn)
    torch.save({"w": base, "x": torch.tensor([0, 1, 2], dtype=torch.int32).to(torch.uint16)}, tmp_path / "src.pth")
    torch_save_to_dcp(tmp_path / "src.pth", tmp_path / "dcp")
    convert_checkpoint(tmp_path / "dcp", tmp_path / "back.pth", ConvertOptions())
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert back["w"].dtype == torch.float8_e4m3fn and back["x"].dtype == torch.uint16
    assert back["w"].view(torch.uint8).tolist() == base.view(torch.uint8).tolist()
    assert back["x"].tolist() == [0, 1, 2]


def test_a_cast_that_reads_the_source_wrong_is_caught_by_the_read_back(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-back compares each cast tensor with torch's cast of the source tensor itself, not
    with the storage bytes the same cast produced: the float8-as-uint8 bug could not pass again."""
    from ckptkit.conversion import plan
    from ckptkit.core.errors import WriteVerificationError
    from ckptkit.storage.tensor_bytes import DerivedStorage, cast_bytes

    class ReadsStoragesDtype(DerivedStorage):   # the old bug: the untyped storage's bytes cast as uint8
        def produce(self, chunk_size: int):
            return (cast_bytes(c, self.source.dtype, self.dtype) for c in self.source.iter_chunks(chunk_size))

    _source(tmp_path / "src.pth", torch.float8_e4m3fn)
    monkeypatch.setattr(plan, "DerivedStorage", ReadsStoragesDtype)
    with pytest.raises(WriteVerificationError, match="tensor 'w': values read back differ from the source's "
                       "float8_e4m3fn values cast to bfloat16 by torch"):
        convert_checkpoint(tmp_path / "src.pth", tmp_path / "out.pth", ConvertOptions(weights_only=True, dtype="bf16"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.pth"]


def test_a_dcp_cast_that_reads_the_source_wrong_is_caught_by_the_read_back(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Written and re-derived the same wrong way (float8 bytes cast as uint8 numbers), the DCP
    read-back still refuses it: it compares with torch's cast of the source tensor itself."""
    from ckptkit.conversion import plan, to_dcp
    from ckptkit.core.errors import WriteVerificationError
    from ckptkit.storage.tensor_bytes import DerivedStorage, cast_bytes

    class ReadsStoragesDtype(DerivedStorage):
        def produce(self, chunk_size: int):
            return (cast_bytes(c, self.source.dtype, self.dtype) for c in self.source.iter_chunks(chunk_size))

    _source(tmp_path / "src.pth", torch.float8_e4m3fn)
    real = to_dcp._stored
    monkeypatch.setattr(to_dcp, "_stored", lambda t: (real(t)[0], real(t)[0].dtype))   # the storage's uint8
    monkeypatch.setattr(plan, "DerivedStorage", ReadsStoragesDtype)
    with pytest.raises(WriteVerificationError, match="tensor 'w': values read back differ from the source's "
                       "float8_e4m3fn values cast to bfloat16 by torch"):
        convert_checkpoint(tmp_path / "src.pth", tmp_path / "out", ConvertOptions(weights_only=True, dtype="bf16",
                                                                                  to="dcp"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.pth"]
