"""Small LoRA-ranker runs on Hugging Face Trainer, and what of their checkpoints must match."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ckptkit.storage.manifest import manifest_path
from trainers.ranker import RankerConfig, StopAt, build_trainer

# 12 prompts, micro-batch 2, accumulation 2: 6 batches, 3 optimizer steps per epoch, 2 epochs.
# Eval and save every step; stops at 1 (inside epoch 0), 3 (the epoch's end), 4 (inside epoch 1).
# With these seeds the plain loader's run stops early at step 5 (best at 2, patience 3): a resume
# at 4 must bring back the patience counter; the generator's run trains to step 6.
STOPS = {"inside epoch 0": 1, "at the end of epoch 0": 3, "inside epoch 1": 4}
TIMING = ("runtime", "per_second", "total_flos")


def small_config(**changes: Any) -> RankerConfig:
    base = dict(samples=12, eval_samples=8, epochs=2, val_iterations=1, hidden=16, layers=1,
                patience=3, lr=0.02, save_total_limit=None)
    return RankerConfig(**{**base, **changes})


def train(cfg: RankerConfig, out: Path, resume: Path | None = None, exact: bool = True,
          stop_at: int | None = None, draw_before_train: bool = False) -> Any:
    """`draw_before_train`: the resuming script draws one random number of its own after building
    the Trainer (which seeds), as a script that samples anything does."""
    trainer, _ = build_trainer(cfg, out, "cpu", exact=exact)
    if stop_at is not None:
        trainer.add_callback(StopAt(stop_at, None))
    if draw_before_train:
        torch.rand(1)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer


def copy_checkpoint(source: Path, out: Path) -> Path:
    """A checkpoint (and its manifest) in a fresh output_dir, as a stopped run leaves it."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / source.name
    shutil.copytree(source, target)
    if manifest_path(source).exists():
        shutil.copy2(manifest_path(source), manifest_path(target))
    return target


def newest(out: Path) -> Path:
    return max(out.glob("checkpoint-*[0-9]"), key=lambda p: int(p.name.split("-")[1]))


def final_state(out: Path) -> dict[str, Any]:
    """The newest checkpoint of a run: adapter, optimizer, scheduler and trainer_state.json
    without timings and paths (best checkpoint by folder name)."""
    folder = newest(out)
    state = json.loads((folder / "trainer_state.json").read_text())
    state["log_history"] = [{k: v for k, v in entry.items() if not any(t in k for t in TIMING)}
                            for entry in state["log_history"]]
    state.pop("total_flos", None)
    best = state.pop("best_model_checkpoint", None)
    state["best_folder"] = Path(best).name if best else None
    return {"folder": folder.name, "trainer_state": state,
            "adapter": load_file(folder / "adapter_model.safetensors"),
            "optimizer": torch.load(folder / "optimizer.pt", weights_only=True),
            "scheduler": torch.load(folder / "scheduler.pt", weights_only=True)}


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two states differ (tensors bitwise), with the largest difference of each tensor."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return [f"{where}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"]
        if torch.equal(a, b):
            return []
        return [f"{where}: max diff {(a.double() - b.double()).abs().max().item():.3g}"]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}: keys {sorted(map(str, set(a) ^ set(b)))}"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def max_adapter_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max((x.double() - b["adapter"][k].double()).abs().max().item() for k, x in a["adapter"].items())
