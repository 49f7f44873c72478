"""Hypothesis strategies for checkpoint-shaped trees, and the comparison of a torch tree with
the tree ckptkit reads back from the same file.

A drawn tree holds dicts (plain and OrderedDict), lists, tuples, ints, floats (NaN and inf
included), strings, None, bools, and tensors of every common dtype. Tensors are views of a
small pool of base tensors, so one tree holds transposes, strided slices, offsets, expands,
0-dim and empty tensors, several of them sharing one storage. Base values come from random
bytes, so floating tensors carry NaN payloads and denormals, and comparisons are bitwise.
"""
from __future__ import annotations

import math
import random
from collections import OrderedDict
from typing import Any

import torch
from hypothesis import strategies as st

from ckptkit.core.checkpoint import StorageRef, TensorRef

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16,
          torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64, torch.complex128,
          # saved through _rebuild_tensor_v3 on an untyped byte storage:
          torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2]
VIEWS = ["whole", "transpose", "step-slice", "offset-slice", "element", "expand", "empty-slice", "flat"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
keys = st.one_of(st.text(max_size=8), st.integers(-5, 50),
                 st.sampled_from(["epoch", "step", "model_state_dict", "optimizer", "config", "state",
                                  "param_groups", "global_step", "params", "lr", "total_batches"]))


def _base_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    numel = math.prod(shape)
    rng = random.Random(seed)
    if dtype == torch.bool:
        return torch.tensor([rng.random() < 0.5 for _ in range(numel)], dtype=torch.bool).reshape(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = bytearray(rng.randbytes(numel * itemsize))
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(raw, dtype=dtype).clone().reshape(shape)


def _view(base: torch.Tensor, how: str) -> torch.Tensor:
    """One kind of view of `base`; falls back to the base itself where the kind does not apply."""
    if how == "transpose" and base.dim() >= 2:
        return base.transpose(0, base.dim() - 1)
    if how == "step-slice" and base.dim() >= 1 and base.shape[-1] >= 2:
        return base[..., ::2]
    if how == "offset-slice" and base.dim() >= 1 and base.shape[0] >= 2:
        return base[1:]
    if how == "element" and base.numel() > 0:
        return base.reshape(-1)[base.numel() // 2] if base.is_contiguous() else base[(0,) * base.dim()]
    if how == "expand" and base.dim() >= 1 and base.shape[0] >= 1:
        return base[:1].expand(3, *base.shape[1:])
    if how == "empty-slice" and base.dim() >= 1:
        return base[:0]
    if how == "flat" and base.is_contiguous():
        return base.reshape(-1)
    return base


@st.composite
def tensor_pools(draw: st.DrawFn) -> list[torch.Tensor]:
    """One to four base tensors of random dtypes and shapes (0-dim and empty shapes included)."""
    bases = []
    for _ in range(draw(st.integers(1, 4))):
        dtype = draw(st.sampled_from(DTYPES))
        shape = tuple(draw(st.lists(st.sampled_from([2, 3, 1, 4, 5, 0]), max_size=3)))
        bases.append(_base_tensor(dtype, shape, draw(st.integers(0, 2 ** 32))))
    return bases


@st.composite
def checkpoint_trees(draw: st.DrawFn) -> Any:
    """A nested tree whose tensor leaves are views of one shared pool of base tensors."""
    pool = draw(tensor_pools())
    tensors = st.builds(_view, st.sampled_from(pool), st.sampled_from(VIEWS))
    leaves = st.one_of(scalars, tensors, tensors)
    tree = draw(st.recursive(leaves, lambda kids: st.one_of(
        st.dictionaries(keys, kids, max_size=4),
        st.dictionaries(keys, kids, max_size=4).map(OrderedDict),
        st.lists(kids, max_size=4),
        st.lists(kids, max_size=3).map(tuple)), max_leaves=12))
    # Every tree holds views of the pool next to the drawn tree, so sharing is always exercised.
    return {"views": draw(st.lists(tensors, min_size=1, max_size=4)), "tree": tree}


def assert_same_tree(original: Any, read: Any, where: str = "<top>",
                     storages: dict[int, StorageRef] | None = None) -> None:
    """`read` (ckptkit's tree) mirrors `original` (torch's): structure, values, tensors, sharing.

    `storages` maps torch storage identities to the StorageRef ckptkit gave them: a storage
    torch shared must come back as one StorageRef object, and distinct ones as distinct objects.
    """
    storages = {} if storages is None else storages
    if isinstance(original, torch.Tensor):
        assert isinstance(read, TensorRef), f"{where}: expected a tensor, read {type(read).__name__}"
        assert_same_tensor(original, read, where)
        identity = original.untyped_storage()._cdata
        if identity in storages:
            assert storages[identity] is read.storage, f"{where}: storage sharing lost"
        else:
            assert all(s is not read.storage for s in storages.values()), f"{where}: storages merged"
            storages[identity] = read.storage
        return
    assert type(read) is type(original), f"{where}: {type(original).__name__} read as {type(read).__name__}"
    if isinstance(original, dict):
        assert list(read) == list(original), f"{where}: keys differ"
        for k in original:
            assert_same_tree(original[k], read[k], f"{where}.{k}", storages)
    elif isinstance(original, (list, tuple)):
        assert len(read) == len(original), f"{where}: lengths differ"
        for i, (a, b) in enumerate(zip(original, read, strict=True)):
            assert_same_tree(a, b, f"{where}.{i}", storages)
    elif isinstance(original, float) and math.isnan(original):
        assert math.isnan(read), f"{where}: NaN read as {read!r}"
    else:
        assert read == original, f"{where}: {original!r} read as {read!r}"


def assert_same_tensor(original: torch.Tensor, read: TensorRef, where: str) -> None:
    assert read.dtype.name == str(original.dtype).removeprefix("torch."), f"{where}: dtype"
    assert read.shape == tuple(original.shape), f"{where}: shape"
    assert read.stride == tuple(original.stride()), f"{where}: stride"
    assert read.storage_offset == original.storage_offset(), f"{where}: storage offset"
    assert read.storage.nbytes == original.untyped_storage().nbytes(), f"{where}: storage size"
    assert read.fits_storage(), f"{where}: tensor reaches outside its storage"
    value = read.to_torch()
    assert value.dtype == original.dtype and value.shape == original.shape, f"{where}: to_torch shape/dtype"
    assert torch.equal(_bits(value), _bits(original)), f"{where}: values differ bit for bit"


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, so NaN payloads and -0.0 compare exactly."""
    dense = torch.empty(t.shape, dtype=t.dtype).copy_(t)   # standard strides, even for size-1 dims
    return dense.reshape(-1).view(torch.uint8)


def save_and_read(tree: Any, path: Any, legacy: bool) -> Any:
    """torch.save `tree` to `path` in the zip or the legacy format, read it back with ckptkit."""
    from ckptkit.formats import open_checkpoint

    torch.save(tree, path, _use_new_zipfile_serialization=not legacy)
    return open_checkpoint(path)


SECTION_KEYS = ["epoch", "step", "global_step", "iter_num", "total_batches", "model_state_dict", "state_dict",
                "model", "optimizer_state_dict", "optimizer", "optimizer_states", "scheduler", "lr_schedulers",
                "scaler", "rng_state", "config", "hyper_parameters", "model_args", "best_val_loss",
                "recall_at_10", "train_losses", "val_history", "best_val_f1", "loops", "state", "param_groups",
                "params", "lr", "betas", "weight_decay", "exp_avg", "fit_loop", "epoch_progress", "current",
                "processed", "pytorch-lightning_version", "data_position", "max_steps"]


@st.composite
def layout_dicts(draw: st.DrawFn) -> dict[Any, Any]:
    """Top-level dicts built from the key names families and sections look for, with odd values.

    They reach every family recogniser and section finder with values of the wrong type,
    as a damaged or hand-written checkpoint would hold.
    """
    pool = draw(tensor_pools())
    tensors = st.builds(_view, st.sampled_from(pool), st.sampled_from(VIEWS))
    family_keys = st.sampled_from(SECTION_KEYS) | keys | st.tuples(st.integers(0, 3), st.text(max_size=3))
    leaves = st.one_of(scalars, tensors)
    values = st.recursive(leaves, lambda kids: st.one_of(
        st.dictionaries(family_keys, kids, max_size=5), st.lists(kids, max_size=4),
        st.lists(kids, max_size=3).map(tuple)), max_leaves=20)
    return draw(st.dictionaries(family_keys, values, min_size=1, max_size=8))
