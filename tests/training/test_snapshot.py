from __future__ import annotations

import io
import threading
from collections import OrderedDict

import pytest
import torch

from ckptkit.training.snapshot import BackgroundWriter, StagingArea


def test_the_snapshot_is_unaffected_by_later_in_place_updates_and_list_appends() -> None:
    weight = torch.ones(3)
    history = [{"step": 1}]
    snap = StagingArea().snapshot({"w": weight, "history": history})
    weight.add_(1)
    history.append({"step": 2})
    assert snap["w"].tolist() == [1.0, 1.0, 1.0]
    assert snap["history"] == [{"step": 1}]


def test_buffers_are_reused_between_snapshots_of_the_same_shapes() -> None:
    area = StagingArea()
    first = area.snapshot({"w": torch.zeros(4)})["w"]
    second = area.snapshot({"w": torch.full((4,), 2.0)})["w"]
    assert first.data_ptr() == second.data_ptr()
    assert second.tolist() == [2.0] * 4
    assert area.nbytes == 16


def test_tied_weights_stay_one_storage_in_the_saved_file() -> None:
    shared = torch.arange(6.0)
    snap = StagingArea().snapshot(OrderedDict(wte=shared, lm_head=shared))
    assert snap["wte"].data_ptr() == snap["lm_head"].data_ptr()
    buffer = io.BytesIO()
    torch.save(snap, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded["wte"].untyped_storage().data_ptr() == loaded["lm_head"].untyped_storage().data_ptr()


def test_state_dict_metadata_is_kept_for_load_state_dict() -> None:
    state = torch.nn.BatchNorm1d(2).state_dict()
    assert StagingArea().snapshot(state)._metadata == state._metadata


def test_the_background_writer_runs_one_job_at_a_time_and_surfaces_errors_on_the_next_wait() -> None:
    writer = BackgroundWriter()
    started, release = threading.Event(), threading.Event()
    order = []

    def slow() -> None:
        started.set()
        release.wait(5)
        order.append("first")

    writer.submit(slow)
    started.wait(5)
    assert writer.busy
    release.set()
    writer.submit(lambda: order.append("second"))  # waits for the first job before starting
    writer.wait()
    assert order == ["first", "second"]

    def failing() -> None:
        raise OSError(28, "No space left on device")

    writer.submit(failing)
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    writer.close()


def test_a_synchronous_writer_runs_the_job_before_submit_returns() -> None:
    done = []
    writer = BackgroundWriter(asynchronous=False)
    writer.submit(lambda: done.append(1))
    assert done == [1]
