"""Benchmark `ckptkit diff` against torch.load-ing both checkpoints and comparing every tensor.

    python scripts/bench_diff.py                 # two ~1.2 GB .pth files (24 x Linear(2048, 2048) + AdamW)
    python scripts/bench_diff.py --size-mb 60    # smoke run

Both sides run as whole processes in the same run, on the same files (in the page cache after
being written): the baseline is a script that torch.loads both files (weights_only=True) and
compares every tensor with torch.equal. Targets (issue 5): ckptkit at least 2x faster, and
its peak RSS at most 512 MiB (mapped file pages count in RSS; diff releases them per chunk).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench_common import FULL_WIDTH, Measured, compile_bytecode, run_measured, warm_page_cache, width_for  # noqa: E402

PERTURBED_LAYERS = (3, 11, 20)

# B is A with a few tensors nudged: three weights (a slice of row 0) and their exp_avg.
PERTURB = """
import sys, torch
state = torch.load(sys.argv[1], weights_only=True)
for layer in map(int, sys.argv[3].split(",")):
    w = state["model_state_dict"][f"{layer}.weight"]
    w[0, : max(1, w.shape[1] // 8)] += 1e-3
    state["optimizer_state_dict"]["state"][2 * layer]["exp_avg"][0, 0] += 1e-3
torch.save(state, sys.argv[2])
"""

BASELINE = """
import sys, torch
def flat(v, p=''):
    if isinstance(v, torch.Tensor):
        yield p, v
    elif isinstance(v, dict):
        for k, x in v.items():
            yield from flat(x, f'{p}.{k}')
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            yield from flat(x, f'{p}.{i}')
a = dict(flat(torch.load(sys.argv[1], weights_only=True)))
b = dict(flat(torch.load(sys.argv[2], weights_only=True)))
changed = []
for k in a.keys() & b.keys():
    if not torch.equal(a[k], b[k]):
        changed.append((k, (a[k].double() - b[k].double()).abs().max().item()))
print(len(a), len(b), len(changed))
sys.exit(1 if changed or a.keys() != b.keys() else 0)
"""


def main() -> None:
    compile_bytecode()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1200.0, help="size of each checkpoint (default 1200)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="keep the checkpoints in DIR and reuse them on the next run (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each side; the fastest counts")
    args = parser.parse_args()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        bench(args.dir, args.size_mb, args.repeat)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            bench(Path(tmp), args.size_mb, args.repeat)


def bench(folder: Path, size_mb: float, repeat: int) -> None:
    a, b = folder / f"a-{size_mb:g}MB.pth", folder / f"b-{size_mb:g}MB.pth"
    width = FULL_WIDTH if size_mb >= 1200 else width_for(size_mb)    # the 24 x Linear(2048, 2048)
    if not (a.exists() and b.exists()):
        # Written by child processes: this one must stay small, because a child's peak RSS
        # (ru_maxrss) starts from the size of the process it was forked from.
        write = (f"from pathlib import Path; from scripts.bench_common import write_big_pth; "
                 f"write_big_pth(Path({str(a)!r}), width={width})")
        subprocess.run([sys.executable, "-c", write], cwd=ROOT, check=True)
        layers = ",".join(map(str, PERTURBED_LAYERS))
        subprocess.run([sys.executable, "-c", PERTURB, str(a), str(b), layers], cwd=ROOT, check=True)
    for path in (a, b):
        warm_page_cache(path)
    print(f"checkpoints: 2 x {a.stat().st_size / 1e9:.2f} GB; {len(PERTURBED_LAYERS)} weights and "
          f"{len(PERTURBED_LAYERS)} exp_avg tensors differ")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}    # this checkout's ckptkit, from any directory
    ours = [run_measured([sys.executable, "-m", "ckptkit", "diff", str(a), str(b), "--json"], env=env)
            for _ in range(repeat)]
    base = [run_measured([sys.executable, "-c", BASELINE, str(a), str(b)]) for _ in range(repeat)]
    report(ours, base)


def report(ours: list[Measured], base: list[Measured]) -> None:
    t_ours, t_base = min(r.seconds for r in ours), min(r.seconds for r in base)
    rss_ours, rss_base = max(r.peak_rss_bytes for r in ours), max(r.peak_rss_bytes for r in base)
    result = json.loads(ours[0].stdout)
    differing = sorted(t["name"] for t in result["tensors"] if t["differs"])
    expected = sorted([f"{i}.weight" for i in PERTURBED_LAYERS] + [f"state.{2 * i}.exp_avg" for i in PERTURBED_LAYERS])
    mib = 1024 * 1024
    print(f"ckptkit diff          {t_ours:7.2f} s   peak RSS {rss_ours / mib:7.0f} MiB   exit {ours[0].returncode}")
    print(f"torch.load + compare  {t_base:7.2f} s   peak RSS {rss_base / mib:7.0f} MiB   exit {base[0].returncode}")
    print(f"speed-up {t_base / t_ours:.2f}x (target >= 2x: {'met' if t_base / t_ours >= 2 else 'NOT met'}); "
          f"peak RSS {rss_ours / mib:.0f} MiB (target <= 512 MiB: {'met' if rss_ours <= 512 * mib else 'NOT met'})")
    print("differences found: " + ("exactly the perturbed tensors" if differing == expected else str(differing)))


if __name__ == "__main__":
    main()
