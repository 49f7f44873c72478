"""Peak memory of `ckptkit convert SRC OUT --to dcp` against the checkpoint's size, in one run.

    python scripts/bench_convert_dcp.py                      # about 1 GB
    python scripts/bench_convert_dcp.py --size-mb 60         # smoke run
    python scripts/bench_convert_dcp.py --checkout /work/main  # measure another checkout's ckptkit

The checkpoint: 24 x nn.Linear(W, W) and its AdamW state after one step (`bench_common`).
Measured, each as a separate process (peak RSS of the process itself, `run_measured`):

* reading it: the convert process's fixed cost (python, torch, torch.distributed.checkpoint,
  ckptkit, the checkpoint opened), without touching a tensor's bytes;
* `ckptkit convert SRC out --to dcp`, and the same with `--dtype bf16`;
* for scale, `torch.load(SRC, weights_only=True)`, which holds the whole checkpoint.

Prints each peak and what converting adds over reading, as a fraction of the checkpoint size;
the conversion is bounded when that growth stays near the largest tensor (W x W float32), not
the checkpoint. Wall times are printed as seen (one run each), not as a claim.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.bench_common import REPO_ROOT, big_pth_in_child, compile_bytecode, run_measured, warm_page_cache, width_for  # noqa: E402

READ = ("import sys, torch, torch.distributed.checkpoint; from ckptkit.formats import open_checkpoint; "
        "open_checkpoint(sys.argv[1])")
TORCH_LOAD = "import sys, torch; torch.load(sys.argv[1], weights_only=True)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1000)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--checkout", type=Path, default=REPO_ROOT, help="the ckptkit checkout to measure")
    args = parser.parse_args()
    compile_bytecode()
    env = {**os.environ, "PYTHONPATH": str(args.checkout.resolve())}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        src = big_pth_in_child(d, args.size_mb)
        size = src.stat().st_size
        warm_page_cache(src)
        # -P: the measured checkout comes from PYTHONPATH, not from the current folder
        convert = [sys.executable, "-P", "-m", "ckptkit", "convert", str(src)]
        contenders = {
            "read (imports + open_checkpoint)": [sys.executable, "-P", "-c", READ, str(src)],
            "ckptkit convert --to dcp": convert + [str(d / "out"), "--to", "dcp"],
            "ckptkit convert --to dcp --dtype bf16": convert + [str(d / "out_bf16"), "--to", "dcp", "--dtype", "bf16"],
            "torch.load (for scale)": [sys.executable, "-c", TORCH_LOAD, str(src)],
        }
        width = width_for(args.size_mb) if args.size_mb < 1200 else 2048
        print(f"checkpoint {size / 2 ** 20:.0f} MiB; largest tensor {width * width * 4 / 2 ** 20:.1f} MiB; "
              f"ckptkit from {args.checkout}")
        peaks = {}
        for name, cmd in contenders.items():
            m = run_measured(cmd, env=env)
            if m.returncode != 0:
                raise SystemExit(f"failed ({m.returncode}): {' '.join(cmd)}")
            peaks[name] = m.peak_rss_bytes
            print(f"  {name:40s} peak RSS {m.peak_rss_bytes / 2 ** 20:8.1f} MiB   ({m.seconds:.1f} s)")
        base = peaks["read (imports + open_checkpoint)"]
        for name in ("ckptkit convert --to dcp", "ckptkit convert --to dcp --dtype bf16"):
            grown = peaks[name] - base
            print(f"{name}: grows {grown / 2 ** 20:.0f} MiB over reading = {grown / size:.3f}x the checkpoint")


if __name__ == "__main__":
    main()
