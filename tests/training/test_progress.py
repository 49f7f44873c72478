from __future__ import annotations

import io

from ckptkit.training.progress import ProgressLine, render_progress
from ckptkit.training.sampler import DataPosition


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _position(epoch: int, batch: int, micro: int = 0) -> DataPosition:
    return DataPosition(epoch, batch, 1270, micro, 4, 0, 8)


def test_the_line_shows_the_true_position_after_resuming_mid_epoch() -> None:
    # EnStack resumed at batch 1000 of 1270 and its tqdm showed "1812it"; the true position is 1008
    text = render_progress(_position(1, 1008), global_step=2522, max_steps=12700, loss=2.31504)
    assert text == "epoch 2 | batch 1008/1270 (79.4%) | step 2522/12700 | loss 2.3150"


def test_the_line_shows_the_micro_step_inside_an_accumulation_window() -> None:
    assert "micro 3/4" in render_progress(_position(0, 7, micro=3), global_step=1, max_steps=10)


def test_a_resumed_display_starts_at_the_saved_batch_not_at_zero_or_twice_it() -> None:
    stream = _Tty()
    line = ProgressLine(stream, max_per_second=1e9)
    resumed_at = _position(0, 1000)   # EnStack: epoch 1 (1-based), batch 1000 done
    line.update(resumed_at.advanced(), global_step=250, max_steps=3175)
    assert stream.getvalue().startswith("\repoch 1 | batch 1001/1270 (78.8%)")


def test_nothing_is_drawn_when_the_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream)
    line.update(_position(0, 5), 1, 10)
    line.close()
    assert stream.getvalue() == ""
    line.message("eval step 10: val_loss 2.0")
    assert stream.getvalue() == "eval step 10: val_loss 2.0\n"


def test_a_message_clears_the_line_and_redraws_it_below() -> None:
    stream = _Tty()
    line = ProgressLine(stream, max_per_second=1e9)
    line.update(_position(0, 5), 1, 10)
    line.message("saved")
    assert stream.getvalue().endswith("saved\n" + "\r" + line.last_text)


def test_off_a_terminal_a_progress_line_is_written_every_interval_with_the_position() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream, every=0.0)   # 0: at every update (the interval is the caller's choice)
    line.update(_position(1, 1008), global_step=2522, max_steps=12700)
    assert stream.getvalue() == "progress: epoch 2 | batch 1008/1270 (79.4%) | step 2522/12700\n"


def test_off_a_terminal_no_progress_line_is_written_before_the_interval_has_passed() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream, every=3600.0)
    line.update(_position(0, 5), global_step=1, max_steps=10)
    line.message("eval step 1: val_loss 3.0")
    assert stream.getvalue() == "eval step 1: val_loss 3.0\n"


def test_a_terminal_gets_the_live_line_and_no_progress_lines() -> None:
    stream = _Tty()
    ProgressLine(stream, max_per_second=1e9, every=0.0).update(_position(0, 5), global_step=1, max_steps=10)
    assert "progress:" not in stream.getvalue() and stream.getvalue().startswith("\repoch 1 | batch 5/1270")
