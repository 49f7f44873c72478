"""The write side: a tree read by ckptkit and written back with write_torch_zip loads in torch
as the original did, with storage records byte-identical."""
from __future__ import annotations

import dataclasses
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptkit.core.errors import UnsupportedFeatureError
from ckptkit.formats import open_checkpoint
from ckptkit.formats.torch_zip import write_torch_zip
from ckptkit.storage.pickle_writer import dumps_tree
from ckptkit.storage.safe_pickle import NumpyArray

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16,
          torch.int32, torch.int64, torch.uint8, torch.bool]


@dataclasses.dataclass
class RunConfig:
    lr: float = 1e-3
    layers: int = 2


def _tensor(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    t = (torch.arange(max(1, int(torch.tensor(shape).prod().item()) if shape else 1)) % 7).to(dtype)
    t = t[: int(torch.tensor(shape).prod().item()) if shape else 1].reshape(shape)
    if t.dim() == 2 and draw(st.booleans()):
        t = t.t()                                   # non-contiguous
    return t


@st.composite
def trees(draw: st.DrawFn) -> dict[str, object]:
    base = _tensor(draw)
    leaves = st.one_of(st.integers(-2**40, 2**40), st.floats(allow_nan=False), st.text(max_size=8),
                       st.none(), st.booleans(), st.binary(max_size=8), st.builds(lambda: _tensor(draw)))
    nested = st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(min_size=1, max_size=5), inner, max_size=3),
        st.tuples(inner, inner)), max_leaves=8)
    tree = {"base": base, "payload": draw(nested), "ordered": OrderedDict(a=1, b=[2.5])}
    if base.numel() > 1:
        tree["view"] = base.as_strided((base.numel() - 1,), (1,), 1)   # shares base's storage
    return tree


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and a.stride() == b.stride() and torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _rewrite(src: Path, dst: Path) -> None:
    ckpt = open_checkpoint(src)
    with open(dst, "wb") as f:
        write_torch_zip(f, ckpt.tree, prefix=dst.stem)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees())
def test_rewritten_archive_loads_in_torch_exactly_as_the_original(tmp_path: Path, tree: dict) -> None:
    src, dst = tmp_path / "src.pt", tmp_path / "dst.pt"
    torch.save(tree, src)
    _rewrite(src, dst)
    back = torch.load(dst, weights_only=True)
    assert _same(tree, back)
    if "view" in tree:
        assert back["view"].untyped_storage().data_ptr() == back["base"].untyped_storage().data_ptr()


def test_storage_records_are_copied_byte_for_byte_and_aligned(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.pt", tmp_path / "dst.pt"
    torch.save({"w": torch.randn(33, 17), "b": torch.randn(5).to(torch.bfloat16)}, src)
    _rewrite(src, dst)
    old, new = zipfile.ZipFile(src), zipfile.ZipFile(dst)
    old_records = {n.split("/", 1)[1]: old.read(n) for n in old.namelist() if "/data/" in n}
    new_records = {n.split("/", 1)[1]: new.read(n) for n in new.namelist() if "/data/" in n}
    assert old_records == new_records
    for key, tensor in open_checkpoint(dst).tensors():
        assert tensor.storage.byte_range().offset % 64 == 0, key


def test_pickled_config_object_is_rewritten_with_its_fields_and_class(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.pt", tmp_path / "dst.pt"
    torch.save({"config": RunConfig(lr=0.5, layers=3), "epoch": 4}, src)
    _rewrite(src, dst)
    back = torch.load(dst, weights_only=False)      # test-only: the class is ours
    assert back["config"] == RunConfig(lr=0.5, layers=3)
    assert back["epoch"] == 4


def test_parameters_keep_requires_grad_through_a_rewrite(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.pt", tmp_path / "dst.pt"
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    torch.save({"p": torch.nn.Parameter(torch.ones(3)), "q": frozen}, src)
    _rewrite(src, dst)
    back = torch.load(dst, weights_only=True)
    assert isinstance(back["p"], torch.nn.Parameter) and back["p"].requires_grad
    assert isinstance(back["q"], torch.nn.Parameter) and not back["q"].requires_grad


def test_numpy_arrays_are_refused_with_a_clear_error() -> None:
    with pytest.raises(UnsupportedFeatureError, match="numpy array"):
        dumps_tree({"rng": NumpyArray("<u4", (624,), b"\0" * 2496)})
