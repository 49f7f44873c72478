"""A tensor rebuild call's shape, stride and offset must be counts (exact ints >= 0, one stride
per dimension); anything else is damage, named with the storage it sits on."""
from __future__ import annotations

import pickle
from typing import Any

import pytest

from ckptkit.core.checkpoint import StorageRef
from ckptkit.core.dtypes import dtype_named
from ckptkit.storage.pickle_known import KNOWN

REBUILD = KNOWN[("torch._utils", "_rebuild_tensor_v2")]
STORAGE = StorageRef("7", dtype_named("float32"), 64, "cpu")


def test_a_well_formed_record_keeps_its_shape_stride_offset_and_grad_flag() -> None:
    ref = REBUILD(STORAGE, 4, [2, 3], (3, 1), True)
    assert (ref.shape, ref.stride, ref.storage_offset, ref.requires_grad) == ((2, 3), (3, 1), 4, True)
    assert ref.storage is STORAGE
    assert (ref.dtype.name, ref.numel) == ("float32", 6)


@pytest.mark.parametrize(("offset", "size", "stride"), [
    (0, (True, 2), (2, 1)),      # a bool is not a count
    (0, (2, 3), (3,)),           # one stride per dimension
    (0, (2, -1), (1, 1)),        # negative size
    (0, (2,), (-1,)),            # negative stride
    (-1, (2,), (1,)),            # negative offset
    (False, (2,), (1,)),         # a bool offset
    (0, (2.0,), (1,)),           # a float size
    (0, "ab", (1, 1)),           # not a tuple or list
    (0, (2,), None),
])
def test_a_record_whose_shape_stride_or_offset_is_not_counts_is_refused_naming_its_storage(
        offset: Any, size: Any, stride: Any) -> None:
    with pytest.raises(pickle.UnpicklingError, match="tensor on storage '7' has a damaged shape, stride or offset"):
        REBUILD(STORAGE, offset, size, stride, False)
