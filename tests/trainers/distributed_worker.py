"""Run by torchrun from test_lm_distributed.py, on 2 gloo ranks: for DDP and then FSDP, an
uninterrupted run and an interrupted + resumed one, into OUT/{ddp,fsdp}/{uninterrupted,resumed}.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/trainers/distributed_worker.py OUT
"""
from __future__ import annotations

import dataclasses
import io
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ckptkit.training import load_for_resume  # noqa: E402
from trainers.lm import PRESETS, LMRun, RunOptions, distributed_session  # noqa: E402

CONFIG = dataclasses.replace(PRESETS["tiny"], grad_accum=2, max_steps=8, save_interval=3, eval_interval=3)
STOP_AT_MICRO_STEP = 7  # inside a window: distributed runs stop at its end (micro-step 8, step 4)


def run_pair(out: Path, fsdp: bool) -> dict[str, object]:
    quiet = io.StringIO()
    LMRun(CONFIG, RunOptions(out=out / "uninterrupted", fsdp=fsdp, progress_stream=quiet)).run()
    resumed = out / "resumed"
    stopped = LMRun(
        CONFIG, RunOptions(out=resumed, fsdp=fsdp, stop_at_micro_step=STOP_AT_MICRO_STEP, progress_stream=quiet)
    ).run()
    point = load_for_resume(resumed)
    LMRun(CONFIG, RunOptions(out=resumed, fsdp=fsdp, progress_stream=quiet), point).run()
    return {"stopped_at": [stopped.global_step, stopped.position.batches_consumed],
            "resumed_from": point.path.name, "resume_warnings": point.warnings}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    with distributed_session():
        results = {mode: run_pair(out / mode, fsdp=mode == "fsdp") for mode in ("ddp", "fsdp")}
        if dist.get_rank() == 0:
            (out / "result.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
