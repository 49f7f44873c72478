"""Time `ckptkit ls` and `ckptkit latest` on a run directory of big checkpoints, as whole processes.

    python scripts/bench_ls.py                 # 10 checkpoints of ~300 MB (3 GB in a temp dir)
    python scripts/bench_ls.py --size-mb 5     # quick smoke run

The run mixes the formats users have: torch.save zip `.pt` files, `.safetensors` files,
Hugging Face Trainer `checkpoint-N/` folders (model.safetensors + optimizer.pt + trainer state)
and torch.distributed.checkpoint folders. Both commands must finish in under 1 second: they read
indexes only (zip directories, pickles, safetensors headers, DCP .metadata), never tensor bytes,
and never import torch. The baseline is a process that only imports ckptkit's CLI, measured in
the same run; times are the best of --repeat runs (the data is in the page cache after writing).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch

from scripts.bench_common import compile_bytecode  # noqa: E402

TENSORS_PER_CHECKPOINT = 200       # a 300 MB model has a few hundred tensors
TARGET_SECONDS = 1.0


def _tensors(total_bytes: int, seed: int) -> dict[str, torch.Tensor]:
    per = max(1, total_bytes // 4 // TENSORS_PER_CHECKPOINT)
    gen = torch.Generator().manual_seed(seed)
    return {f"layers.{i}.weight": torch.rand(per, generator=gen) for i in range(TENSORS_PER_CHECKPOINT)}


def _adam_state(model: dict[str, torch.Tensor]) -> dict[str, object]:
    state = {i: {"step": torch.tensor(float(i)), "exp_avg": t, "exp_avg_sq": t.clone()}
             for i, t in enumerate(model.values())}
    return {"state": state, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": list(state)}]}


def build_run(root: Path, size_mb: int) -> None:
    """10 checkpoints of ~size_mb each; steps 100..1000 assigned so names do not sort by progress."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file

    size = size_mb * 1_000_000
    steps = iter([700, 100, 1000, 300, 900, 200, 500, 800, 400, 600])
    for i in range(3):
        step = next(steps)
        torch.save({"model_state_dict": _tensors(size, i), "global_step": step, "epoch": 0,
                    "best_val_loss": 0.5, "train_history": [1.0]}, root / f"checkpoint_step_{step}.pt")
    for i in range(2):
        step = next(steps)
        save_file(_tensors(size, 10 + i), str(root / f"weights_{step}.safetensors"), metadata={"step": str(step)})
    for i in range(3):
        step = next(steps)
        folder = root / f"checkpoint-{step}"
        folder.mkdir()
        model = _tensors(size // 3, 20 + i)
        save_file(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
        torch.save(_adam_state(model), folder / "optimizer.pt")
        torch.save({"last_epoch": step, "_step_count": step + 1}, folder / "scheduler.pt")
        torch.save({"cpu": torch.get_rng_state()}, folder / "rng_state.pth")
        (folder / "trainer_state.json").write_text(json.dumps(
            {"global_step": step, "epoch": step / 1000, "max_steps": 1000, "num_train_epochs": 1, "log_history": []}))
    for i in range(2):
        step = next(steps)
        dcp.save({"model": _tensors(size, 30 + i), "step": step}, checkpoint_id=str(root / f"dcp_{step}"))


def _time(argv: list[str], repeat: int) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
    assert result is not None
    return min(times), statistics.median(times), result


def main() -> int:
    compile_bytecode()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300, help="size of each checkpoint (default 300)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (best and median reported)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ckptkit-bench-ls-"))
    try:
        start = time.perf_counter()
        build_run(root, args.size_mb)
        total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        print(f"built 10 checkpoints, {total / 1e9:.2f} GB, in {time.perf_counter() - start:.1f} s: {root}")
        py = [sys.executable]
        base, _, _ = _time(py + ["-c", "import ckptkit.cli"], args.repeat)
        ls_best, ls_median, ls = _time(py + ["-m", "ckptkit", "ls", str(root)], args.repeat)
        latest_best, latest_median, latest = _time(py + ["-m", "ckptkit", "latest", str(root)], args.repeat)
        if ls.returncode not in (0, 1) or latest.returncode != 0:
            print(ls.stdout, ls.stderr, latest.stderr, sep="\n")
            return 2
        print(ls.stdout)
        print(f"latest -> {latest.stdout.strip()}")
        print(f"baseline (python -c 'import ckptkit.cli'): {base:.3f} s")
        for name, best, median in (("ls", ls_best, ls_median), ("latest", latest_best, latest_median)):
            verdict = "OK" if best < TARGET_SECONDS else "TOO SLOW"
            print(f"ckptkit {name:6s}: best {best:.3f} s, median {median:.3f} s, {best / base:.2f}x baseline, "
                  f"target < {TARGET_SECONDS:.0f} s: {verdict}")
        return 0 if max(ls_best, latest_best) < TARGET_SECONDS else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
