"""Write the two-rank torch.distributed.checkpoint fixtures under tests/fixtures/.

    python scripts/make_sharded_dcp_fixture.py [plain|strided] [OUT_DIR]

Two CPU processes (gloo) save one state with DCP. Values are arange() so tests can check the
bytes. Takes ~30 s on 2 cores (process start-up); the outputs (a few KB) are committed, so
tests do not run this.

- plain (tests/fixtures/dcp_two_ranks/): {"model": {"w": DTensor 6x4 sharded by rows, "b":
  replicated vector of 5}, "step": 7}: `w` is stored as two chunks, one per rank file
  (`__0_0.distcp`, `__1_0.distcp`), `b` once.
- strided (tests/fixtures/dcp_two_ranks_strided/): every rank's chunk is stored non-contiguous
  (DCP torch.save's a local shard as it is, strides kept): row-sharded weights transposed
  (float32, bfloat16, int64, bool: sharded by columns, each rank's chunk a transposed view), a
  3-d tensor permuted so that the shard dimension moves last, a column-sharded weight
  transposed (split by rows, each chunk a transposed view), and a replicated transposed
  weight that one rank writes.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

FIXTURES = Path(__file__).parent.parent / "tests" / "fixtures"
OUT_DIRS = {"plain": FIXTURES / "dcp_two_ranks", "strided": FIXTURES / "dcp_two_ranks_strided"}


def plain_state(mesh: Any) -> dict[str, Any]:
    w = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    b = torch.arange(5, dtype=torch.float32)
    return {"model": {"w": distribute_tensor(w, mesh, [Shard(0)]), "b": distribute_tensor(b, mesh, [Replicate()])},
            "step": 7}


def strided_state(mesh: Any) -> dict[str, Any]:
    """The global values are what tests expect: `strided_values()`."""
    rows = {name: distribute_tensor(t, mesh, [Shard(0)]) for name, t in _row_major_sources().items()}
    model = {f"{name}_t": t.t() for name, t in rows.items()}     # Shard(0) -> Shard(1), local views transposed
    cube = distribute_tensor(torch.arange(4 * 2 * 3, dtype=torch.float32).reshape(4, 2, 3), mesh, [Shard(0)])
    model["cube_p"] = cube.permute(1, 2, 0)                        # Shard(2), local strides (3, 1, 6)
    cols = distribute_tensor(torch.arange(24, dtype=torch.float32).reshape(4, 6), mesh, [Shard(1)])
    model["c_t"] = cols.t()                                        # Shard(0): split by rows, rows strided
    model["r_t"] = distribute_tensor(torch.arange(15, dtype=torch.float32).reshape(3, 5), mesh, [Replicate()]).t()
    return {"model": model, "step": 9}


def _row_major_sources() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(24, dtype=torch.float32).reshape(6, 4) / 8,
            "h": (torch.arange(24, dtype=torch.float32).reshape(6, 4) - 11.5).to(torch.bfloat16),
            "i": torch.arange(24, dtype=torch.int64).reshape(6, 4) * (1 << 40),
            "m": (torch.arange(24).reshape(6, 4) % 3 == 0)}


def strided_values() -> dict[str, torch.Tensor]:
    """The strided fixture's model, as plain tensors (what torch's own DCP load must give)."""
    values = {f"{name}_t": t.t() for name, t in _row_major_sources().items()}
    values["cube_p"] = torch.arange(4 * 2 * 3, dtype=torch.float32).reshape(4, 2, 3).permute(1, 2, 0)
    values["c_t"] = torch.arange(24, dtype=torch.float32).reshape(4, 6).t()
    values["r_t"] = torch.arange(15, dtype=torch.float32).reshape(3, 5).t()
    return values


STATES = {"plain": plain_state, "strided": strided_state}


def _save(rank: int, world: int, kind: str, out: str, store: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    dcp.save(STATES[kind](mesh), checkpoint_id=out)
    dist.destroy_process_group()


def main(kind: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.distcp")) + [out / ".metadata"]:
        old.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_save, args=(2, kind, str(out), str(Path(tmp) / "store")), nprocs=2)
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out}")


if __name__ == "__main__":
    chosen = sys.argv[1] if len(sys.argv) > 1 else "plain"
    main(chosen, Path(sys.argv[2]) if len(sys.argv) > 2 else OUT_DIRS[chosen])
