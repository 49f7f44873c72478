"""Building checkpoint folders and run directories for tests, from the real fixtures."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

REAL = Path(__file__).parent / "fixtures" / "real"
HF_FULL = REAL / "hf_full" / "checkpoint-4"


def hub_snapshot(model: Path, source: Path, revision: str = "0123abc") -> Path:
    """`source`'s files laid out as the Hugging Face hub cache keeps a download under `model`
    (models--org--name/): blobs/ named by a hash, refs/main, and snapshots/REVISION/ whose every
    file links to its blob. Returns the snapshot folder."""
    blobs, snapshot = model / "blobs", model / "snapshots" / revision
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (model / "refs").mkdir()
    (model / "refs" / "main").write_text(revision)
    for i, file in enumerate(sorted(source.iterdir())):
        (blobs / f"{i:040x}").write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(Path("../../blobs") / f"{i:040x}")
    return snapshot


def hf_checkpoint(dest: Path, global_step: int, epoch: float, max_steps: int = 2000, **state: Any) -> Path:
    """A copy of a real Trainer checkpoint whose trainer_state.json says `global_step` and `epoch`."""
    shutil.copytree(HF_FULL, dest)
    trainer_state = json.loads((dest / "trainer_state.json").read_text())
    trainer_state.update(global_step=global_step, epoch=epoch, max_steps=max_steps, log_history=[], **state)
    (dest / "trainer_state.json").write_text(json.dumps(trainer_state))
    return dest


def write_dcp(dest: Path, state: dict[str, Any]) -> Path:
    """torch.distributed.checkpoint.save in this process (no process group needed)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(state, checkpoint_id=str(dest))
    return dest


def strided_dcp_state() -> dict[str, Any]:
    """Tensors DCP stores non-contiguous in their items (it keeps their strides), and two it
    clones first (a slice of a larger storage, an expand). Values exact in every dtype."""
    import torch

    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) - 5.5
    return {
        "w_t": base.t(),                                                           # stride (1, 4)
        "h_t": (base * 3).to(torch.bfloat16).t(),
        "i_p": (torch.arange(24, dtype=torch.int64) * (1 << 40)).reshape(2, 3, 4).permute(2, 0, 1),
        "m_t": (torch.arange(6) % 4 == 0).reshape(2, 3).t(),
        "odd": torch.arange(4, dtype=torch.float32).as_strided((2, 2), (0, 1), 2),  # stride 0, storage offset 2
        "rows": torch.arange(20, dtype=torch.float32)[5:9],                        # cloned by DCP
        "wide": torch.arange(3, dtype=torch.float32).expand(4, 3),                 # cloned by DCP
        "scalar": torch.tensor(2.5),
        "empty_t": torch.empty(0, 3).t(),
    }


def seed003_folder(dest: Path, epoch: int, step: int, total_batches: int = 1270) -> Path:
    """EnStack's last_checkpoint layout (save_pretrained + training_state.pth) at epoch/step."""
    import torch

    shutil.copytree(REAL / "save_pretrained_training_state" / "last_checkpoint", dest)
    torch.save({"epoch": epoch, "step": step, "total_batches": total_batches, "best_val_f1": 0.5,
                "best_val_acc": 0.5}, dest / "training_state.pth")
    return dest


def experiment_file(dest: Path, global_step: int) -> Path:
    """Run_experiment.py's experiment .pt dict (no pickled config class, so it reads clean)."""
    import torch

    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": {"w": torch.ones(2, 2)}, "optimizer_state_dict": {"state": {}, "param_groups": []},
                "global_step": global_step, "epoch": 0, "best_val_loss": 0.4,
                "train_history": [1.0, 0.5], "val_history": []}, dest)
    return dest
