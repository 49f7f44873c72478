"""Benchmark `ckptkit convert` against a durable copy and against the usual recipe, in one run.

    python scripts/bench_convert.py                # the 1.2 GB .pth of issue 7
    python scripts/bench_convert.py --size-mb 60   # smoke run

The checkpoint: 24 x nn.Linear(W, W) (W = 2048 for 1.2 GB) and its AdamW state after one step,
saved with torch.save. Measured, each as a separate process:

* durable copy: `cp SRC DST` then `sync DST` (our writes are fsynced too);
* `ckptkit convert SRC out.safetensors --weights-only` (the model weights, verified);
* `ckptkit convert SRC out.pth` (the whole checkpoint re-written, verified);
* the usual recipe: `torch.load(SRC, weights_only=True)` then `safetensors.torch.save_file`.

Prints wall times, peak RSS (from wait4, per process) and the ratios the issue targets:
convert time <= 1.3x the durable copy, and peak RSS <= 300 MiB against the recipe's ~1.1x file
size. The source is read once before timing so every contender starts with it in page cache.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.bench_common import compile_bytecode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAYERS = 24
RECIPE = ("import sys, torch; from safetensors.torch import save_file; "
          "sd = torch.load(sys.argv[1], weights_only=True)['model_state_dict']; "
          "save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[2])")


def write_big_pth(path: Path, size_mb: int) -> int:
    """A training checkpoint of about `size_mb` MB: model + AdamW state; returns its size."""
    import torch

    width = 2048 if size_mb == 1200 else max(8, int(math.sqrt(size_mb * 1e6 / (LAYERS * 12))))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(LAYERS)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, width)).sum().backward()
    opt.step()
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "epoch": 0}, path)
    return path.stat().st_size


def measure(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(cmd)}")
    return elapsed, usage.ru_maxrss * 1024


def main() -> None:
    compile_bytecode()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        src = d / "big.pth"
        # Built in a child: Linux carries a parent's peak RSS into its children's ru_maxrss, so
        # this process must stay small (no torch here) for the per-process peaks to mean anything.
        subprocess.run([sys.executable, "-c", "import sys; from scripts.bench_convert import write_big_pth; "
                        "write_big_pth(__import__('pathlib').Path(sys.argv[1]), int(sys.argv[2]))",
                        str(src), str(args.size_mb)], cwd=REPO, check=True)
        size = src.stat().st_size
        # The source's own writeback must not land in the first contender's `sync`.
        subprocess.run(["sync", str(src)], check=True)
        subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)   # warm the page cache once
        ckptkit = [sys.executable, "-m", "ckptkit", "convert"]
        contenders = {
            "durable copy (cp + sync)": ["sh", "-c", f"cp '{src}' '{d / 'copy.pth'}' && sync '{d / 'copy.pth'}'"],
            "ckptkit convert -> .safetensors --weights-only": ckptkit + [str(src), str(d / "out.safetensors"),
                                                                         "--weights-only"],
            "ckptkit convert -> .pth (whole checkpoint)": ckptkit + [str(src), str(d / "out.pth")],
            "recipe: torch.load + save_file": [sys.executable, "-c", RECIPE, str(src), str(d / "recipe.st")],
        }
        outputs = ["copy.pth", "out.safetensors", "out.pth", "recipe.st"]
        runs: dict[str, list[tuple[float, int]]] = {name: [] for name in contenders}
        for _ in range(args.repeat):     # interleaved, so a noisy moment hits every contender alike
            for (name, cmd), out in zip(contenders.items(), outputs, strict=True):   # one output each
                (d / out).unlink(missing_ok=True)
                runs[name].append(measure(cmd))
        rows = {name: (statistics.median(s for s, _ in r), max(m for _, m in r)) for name, r in runs.items()}
        print(f"median of {args.repeat} interleaved runs; checkpoint: {size / 1e6:.0f} MB "
              f"({LAYERS} x Linear + AdamW state), model weights {(d / 'recipe.st').stat().st_size / 1e6:.0f} MB")
        for name, (secs, rss) in rows.items():
            print(f"  {name:48s} {secs:7.2f} s   peak RSS {rss / 2 ** 20:8.1f} MiB")
        copy_s = rows["durable copy (cp + sync)"][0]
        st_s, st_rss = rows["ckptkit convert -> .safetensors --weights-only"]
        pth_s, pth_rss = rows["ckptkit convert -> .pth (whole checkpoint)"]
        recipe_rss = rows["recipe: torch.load + save_file"][1]
        print(f"time   convert->safetensors / durable copy = {st_s / copy_s:.2f}x (target <= 1.3x)")
        print(f"time   convert->pth (whole) / durable copy = {pth_s / copy_s:.2f}x")
        print(f"memory convert->safetensors peak RSS = {st_rss / 2 ** 20:.0f} MiB (target <= 300 MiB); "
              f"recipe {recipe_rss / 2 ** 20:.0f} MiB = {recipe_rss / size:.2f}x file size; "
              f"ours / recipe = {st_rss / recipe_rss:.2f}x")
        print(f"memory convert->pth peak RSS = {pth_rss / 2 ** 20:.0f} MiB")


if __name__ == "__main__":
    main()
