"""Benchmark: the whole `ckptkit inspect` process against `torch.load(mmap=True)`, in the same run.

    python scripts/bench_inspect.py [--size-mb 1200] [--repeat 3] [--path FILE] [--keep DIR]

Targets (issue 2): on the 1.2 GB .pth (24 x nn.Linear(2048, 2048) + AdamW state after one
step), `python -m ckptkit inspect PATH` takes at most 0.15x the wall time of
`python -c "import torch; torch.load(PATH, mmap=True, weights_only=True)"` and peaks at most
64 MiB RSS. Both run as fresh processes on a warm page cache; the best of --repeat runs is
compared, and the highest inspect RSS seen is reported. Exits 1 when a target is missed.
Use --size-mb 20 for a smoke run; --path to measure an existing checkpoint.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_common import Measured, big_pth_in_child, compile_bytecode, repo_env, run_measured, warm_page_cache  # noqa: E402

TIME_TARGET = 0.15          # inspect wall time / torch.load(mmap=True) wall time
RSS_TARGET = 64 * 2 ** 20   # bytes
BASELINE = "import sys, torch; torch.load(sys.argv[1], mmap=True, weights_only=True)"


def main() -> None:
    compile_bytecode()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1200.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--path", type=Path, help="measure this checkpoint instead of writing one")
    parser.add_argument("--keep", type=Path, help="write (or reuse) the checkpoint in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.path or big_pth_in_child(args.keep or Path(tmp), args.size_mb)
        warm_page_cache(path)
        ours_cmd = [sys.executable, "-m", "ckptkit", "inspect", str(path)]
        base_cmd = [sys.executable, "-c", BASELINE, str(path)]
        ours, base = [], []
        for _ in range(args.repeat):
            ours.append(_checked(run_measured(ours_cmd, repo_env()), "ckptkit inspect"))
            base.append(_checked(run_measured(base_cmd), "torch.load(mmap=True)"))
        ok = report(path, min(m.seconds for m in ours), min(m.seconds for m in base),
                    max(m.peak_rss_bytes for m in ours), min(m.peak_rss_bytes for m in base))
    sys.exit(0 if ok else 1)



def _checked(m: Measured, what: str) -> Measured:
    if m.returncode != 0:
        sys.exit(f"{what} failed (exit {m.returncode}): {m.stdout[:300]}")
    return m


def report(path: Path, ours_s: float, base_s: float, ours_rss: int, base_rss: int) -> bool:
    time_ratio, rss_ratio = ours_s / base_s, ours_rss / RSS_TARGET
    time_ok, rss_ok = time_ratio <= TIME_TARGET, ours_rss <= RSS_TARGET
    mib = 2 ** 20
    print(f"checkpoint            {path} ({path.stat().st_size / 1e9:.2f} GB)")
    print(f"torch.load(mmap=True) {base_s:8.3f} s   peak RSS {base_rss / mib:8.1f} MiB   (best of runs)")
    print(f"ckptkit inspect       {ours_s:8.3f} s   peak RSS {ours_rss / mib:8.1f} MiB   (best time, worst RSS)")
    print(f"time ratio            {time_ratio:.3f}x of torch.load (target <= {TIME_TARGET}x)  "
          f"{'OK' if time_ok else 'MISSED'}")
    print(f"RSS ratio             {rss_ratio:.3f}x of 64 MiB ({ours_rss / mib:.1f} MiB; target <= 64 MiB)  "
          f"{'OK' if rss_ok else 'MISSED'}")
    return time_ok and rss_ok


if __name__ == "__main__":
    main()
