"""How exactly a Hugging Face Trainer run resumes, with and without ckptkit's ExactResume.

    PYTHONPATH=. python scripts/bench_hf_resume.py [--out /dev/shm/hf_resume]

The LoRA ranker (tiny random Llama, LoRA r=4 on q_proj/v_proj, dropout 0.1), 36 shuffled prompts,
micro-batch 2, accumulation 2 (9 optimizer steps per epoch), 2 epochs, eval and save every 3
steps, load_best_model_at_end on NDCG@5, EarlyStopping. For each train dataloader, one
uninterrupted run keeps every checkpoint; a fresh Trainer then resumes from checkpoint-3 (inside
epoch 0), -9 (the epoch's end) and -12 (inside epoch 1) and trains to the end; its newest
checkpoint is compared with the uninterrupted run's (adapter, optimizer, scheduler,
trainer_state.json apart from timings and paths). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integrations.hf_runs import copy_checkpoint, differences, final_state  # noqa: E402
from trainers.ranker import (  # noqa: E402
    RankerConfig,
    build_trainer,
    collate,  # noqa: E402
)

STOPS = (3, 9, 12)
LOADERS = {
    "Trainer's default (seedable sampler)": dict(loader_seed=None, default_loader=True, extra_draw=False),
    "overridden get_train_dataloader, plain DataLoader(shuffle=True)": dict(
        loader_seed=None, default_loader=False, extra_draw=False
    ),
    "the same with its own seeded torch.Generator": dict(loader_seed=7, default_loader=False, extra_draw=False),
    "plain, one extra torch.rand() before train() in the resumed process": dict(
        loader_seed=None, default_loader=False, extra_draw=True
    ),
}


def run(cfg: RankerConfig, out: Path, *, exact: bool, default_loader: bool, resume: Path | None = None,
        extra_draw: bool = False) -> float:
    trainer, _ = build_trainer(cfg, out, "cpu", exact=exact)
    if default_loader:   # Trainer's own loader: accelerate's seedable sampler, reseeded per epoch
        trainer.get_train_dataloader = types.MethodType(type(trainer).__mro__[1].get_train_dataloader, trainer)
        trainer.data_collator = collate
    if extra_draw:
        torch.rand(1)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    steps = result.global_step - (int(resume.name.split("-")[1]) if resume else 0)
    return (time.perf_counter() - started) / max(steps, 1)


def verdict(full: dict, resumed: dict) -> str:
    diffs = differences(full, resumed)
    if not diffs:
        return "bitwise"
    adapter = [d for d in diffs if d.startswith("/adapter")]
    if adapter:
        worst = max(float(d.rsplit(" ", 1)[1]) for d in adapter if "max diff" in d)
        return f"adapter max diff {worst:.1e}"
    return "weights bitwise; differs: " + ", ".join(sorted({d.split(":")[0].split("[")[0] for d in diffs}))[:60]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/dev/shm/hf_resume"))
    out = parser.parse_args().out
    shutil.rmtree(out, ignore_errors=True)
    torch.set_num_threads(1)
    print("| train dataloader | resume by | stop at 3 (epoch 0) | 9 (epoch end) | 12 (epoch 1) |")
    print("|---|---|---|---|---|")
    per_step = []
    for index, (name, how) in enumerate(LOADERS.items()):
        cfg = RankerConfig(samples=36, epochs=2, val_iterations=3, patience=10, save_total_limit=None,
                           loader_seed=how["loader_seed"])
        full_dir = out / f"{index}-full"
        per_step.append(run(cfg, full_dir, exact=True, default_loader=how["default_loader"]))
        full = final_state(full_dir)
        for exact in (False, True):
            cells = []
            for stop in STOPS:
                where = out / f"{index}-{exact}-{stop}"
                resume = copy_checkpoint(full_dir / f"checkpoint-{stop}", where)
                run(cfg, where, exact=exact, default_loader=how["default_loader"], resume=resume,
                    extra_draw=how["extra_draw"])
                cells.append(verdict(full, final_state(where)))
            print(f"| {name} | {'Trainer + ExactResume' if exact else 'Trainer alone'} | " + " | ".join(cells) + " |",
                  flush=True)
    print(f"\nuninterrupted runs: {sum(per_step) / len(per_step):.3f} s per optimizer step on CPU "
          "(2 micro-batches of 2 per step, eval + save every 3 steps)")


if __name__ == "__main__":
    main()
