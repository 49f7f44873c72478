"""The checkpoints `bench_scale.py` measures: many small tensors, as a mixture-of-experts has.

Each builder runs in a child process of its own (`python scripts/bench_scale_data.py KIND ...`) so
that torch and the tensors it built never count towards the benchmark's own memory.

    pth PATH PARAMS [CHANGED]   PARAMS small parameters + their AdamW state after one real step:
                                PARAMS x 4 tensor records (weight, exp_avg, exp_avg_sq, step) in
                                a recsys-style dict with epoch and global_step. CHANGED > 0:
                                the same checkpoint with that many parameters changed (for diff).
    shards FOLDER TENSORS N     N safetensors shards holding TENSORS tensors + the HF index.
    dcp FOLDER CHUNKS           a torch.distributed.checkpoint folder of CHUNKS tensors (one
                                chunk each), written by torch's own `dcp.save`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

SHAPE = (8, 8)          # 256 bytes of float32 per record: 80,000 records are about 83 MB with the pickle


def _params(count: int, seed: int = 0) -> list:
    import torch

    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*SHAPE)) for _ in range(count)]


def write_pth(path: Path, count: int, changed: int = 0) -> None:
    """The EnStack/recsys-style dict: model_state_dict + optimizer_state_dict + epoch + global_step."""
    import torch

    params = _params(count)
    opt = torch.optim.AdamW(params, lr=1e-3)
    sum(p.sum() for p in params).backward()
    opt.step()
    with torch.no_grad():
        for p in params[:changed]:          # a few tensors differ, as after a partial update
            p.add_(1.0)
    model = {f"experts.{i // 4}.w{i % 4}": p.detach() for i, p in enumerate(params)}
    torch.save({"model_state_dict": model, "optimizer_state_dict": opt.state_dict(),
                "epoch": 3, "global_step": 1200}, path)


def write_shards(folder: Path, tensors: int, shards: int) -> None:
    """HF `save_pretrained` layout: model-0000i-of-0000N.safetensors + model.safetensors.index.json."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    per_shard = -(-tensors // shards)
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        keys = [f"model.layers.{i // 8}.experts.{i % 8}.weight" for i in range(s * per_shard,
                                                                                  min(tensors, (s + 1) * per_shard))]
        save_file({k: torch.full(SHAPE, float(i)) for i, k in enumerate(keys)}, str(folder / name),
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, name))
    index = {"metadata": {"total_size": tensors * 256}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps({"model_type": "bench", "architectures": ["Bench"]}))


def write_dcp(folder: Path, chunks: int) -> None:
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    state = {"model": {f"experts.{i // 4}.w{i % 4}": torch.randn(*SHAPE) for i in range(chunks)},
             "step": 1200}
    with warnings.catch_warnings():     # "no process group": DCP saves single-process as it says
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(folder))


if __name__ == "__main__":
    kind, target, *numbers = sys.argv[1:]
    args = [int(n) for n in numbers]
    {"pth": write_pth, "shards": write_shards, "dcp": write_dcp}[kind](Path(target), *args)
