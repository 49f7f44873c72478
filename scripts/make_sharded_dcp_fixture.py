"""Write tests/fixtures/dcp_two_ranks/: a torch.distributed.checkpoint saved by two ranks.

    python scripts/make_sharded_dcp_fixture.py [OUT_DIR]

Two CPU processes (gloo) save {"model": {"w": DTensor 6x4 sharded by rows, "b": replicated
vector of 5}, "step": 7}: `w` is stored as two chunks, one per rank file (`__0_0.distcp`,
`__1_0.distcp`), `b` once. Values are arange() so tests can check the bytes. Takes ~30 s on
2 cores (process start-up); the output (7 KB) is committed, so tests do not run this.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

DEFAULT_OUT = Path(__file__).parent.parent / "tests" / "fixtures" / "dcp_two_ranks"


def _save(rank: int, world: int, out: str, store: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    w = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    b = torch.arange(5, dtype=torch.float32)
    state = {"model": {"w": distribute_tensor(w, mesh, [Shard(0)]), "b": distribute_tensor(b, mesh, [Replicate()])},
             "step": 7}
    dcp.save(state, checkpoint_id=out)
    dist.destroy_process_group()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.distcp")) + [out / ".metadata"]:
        old.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_save, args=(2, str(out), str(Path(tmp) / "store")), nprocs=2)
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
