"""Write one small checkpoint in each seed system's layout, as those systems write them.

    python scripts/make_seed_samples.py OUT_DIR

The checkpoints are what the users' trainers save (see ../shared/seeds/), made from tiny
randomly initialised models in about a second; tests and the README examples use them.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch import nn


@dataclasses.dataclass
class ExperimentConfig:
    """Stands in for run_experiment.py's config class: pickled as an object, as that trainer does."""

    d_model: int = 32
    n_layers: int = 2
    batch_size: int = 4
    max_steps: int = 2000
    save_interval: int = 500


def _trained(model: nn.Module, steps: int = 2, lr: float = 1e-3) -> tuple[nn.Module, torch.optim.Optimizer, object]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    for _ in range(steps):
        first = next(model.parameters())
        x = torch.randn(4, first.shape[1] if first.dim() == 2 else 8)
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return model, opt, sched


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def write_samples(out: Path) -> dict[str, Path]:
    """Write every sample below `out`; returns {sample name: path}."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    model, opt, sched = _trained(_mlp(0))

    recsys = out / "recsys" / "models"          # LlamaRec retriever
    recsys.mkdir(parents=True, exist_ok=True)
    state = {"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "epoch": 5}
    for name in ("checkpoint-recent.pth", "checkpoint-recent.pth.final"):
        torch.save(state, recsys / name)
        paths[name] = recsys / name
    torch.save({"model_state_dict": model.state_dict()}, recsys / "best_acc_model.pth")
    paths["best_acc_model.pth"] = recsys / "best_acc_model.pth"

    retrieval = out / "retrieval" / "checkpoints"   # fashion recommender: epoch stored as epoch+1
    retrieval.mkdir(parents=True, exist_ok=True)
    path = retrieval / "optimized_model_epoch_10_recall_0.3456.pt"
    torch.save({"epoch": 10, "model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
                "scheduler_state_dict": sched.state_dict(), "loss": 0.4821, "recall_at_10": 0.3456,
                "train_losses": [0.9, 0.7, 0.6, 0.55, 0.52, 0.5, 0.49, 0.485, 0.483, 0.4821],
                "val_recalls": [0.1, 0.2, 0.25, 0.28, 0.3, 0.31, 0.33, 0.34, 0.3401, 0.3456]}, path)
    paths["retrieval"] = path

    experiment = out / "experiment" / "checkpoints"  # run_experiment.py LM
    experiment.mkdir(parents=True, exist_ok=True)
    for step, name in ((500, "checkpoint_step_500.pt"), (1000, "checkpoint_step_1000.pt"),
                       (500, "best_model.pt"), (2000, "final_model.pt")):
        torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
                    "scheduler_state_dict": sched.state_dict(), "global_step": step, "epoch": 0,
                    "best_val_loss": 0.3961, "config": ExperimentConfig(),
                    "train_history": [1.0 / (1 + i) for i in range(step // 100)],
                    "val_history": [{"step": s, "val_loss": 0.5 - s / 10000} for s in range(500, step + 1, 500)]},
                   experiment / name)
        paths[name] = experiment / name

    last = out / "enstack" / "checkpoints" / "codebert" / "last_checkpoint"   # EnStack
    last.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(last / "model.safetensors"),
              metadata={"format": "pt"})
    (last / "config.json").write_text(json.dumps({"model_type": "roberta", "num_labels": 2}))
    torch.save({"epoch": 1, "step": 1000, "total_batches": 1270, "best_val_f1": 0.0667, "best_val_acc": 0.5,
                "optimizer_state_dict": opt.state_dict(), "scheduler_state_dict": sched.state_dict()},
               last / "training_state.pth")
    paths["training_state.pth"] = last / "training_state.pth"

    legacy = out / "legacy" / "model_legacy.pt"
    legacy.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    paths["legacy"] = legacy
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for name, path in write_samples(Path(sys.argv[1])).items():
        print(f"{name:32s} {path}")
