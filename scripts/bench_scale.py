"""Benchmark: every command on checkpoints of many small tensors, against torch's own readers.

    python scripts/bench_scale.py                 # 80,000-record .pth, 100,000-tensor shard folder
    python scripts/bench_scale.py --params 50 --shard-tensors 200 --chunks 50 --siblings 3 --repeat 1
                                                  # smoke run (tests/test_bench_scripts.py)

Builds (each in a child process, see bench_scale_data.py): a `.pth` of PARAMS small parameters
with their AdamW state (PARAMS x 4 tensor records), a copy differing in a few tensors, one of
half the size (for the slope), a run folder holding it among --siblings other checkpoints, a
10-shard safetensors folder of --shard-tensors tensors, and a DCP folder of --chunks chunks.
Then runs, as fresh processes on a warm page cache, interleaved round by round and reported as
medians: `inspect`, `validate`, `validate --deep`, `ls`, `diff`, `convert` on the `.pth`;
`inspect`, `validate`, `ls` on the shard and DCP folders; and the baselines of the same run:
`torch.load(mmap=True, weights_only=True)` of the `.pth`, a `safe_open` key listing of every
shard, DCP's own `.metadata` read, one CRC-32 pass over the `.pth`, and the unpickling floor
(data.pkl through a bare C unpickler with Python callbacks, and through ckptkit's own).
With --shm everything is also measured from /dev/shm (no disk: software cost alone).

Targets (issue "Big checkpoints"): inspect <= 0.25x torch.load and peak RSS <= 64 MiB + 1 KiB
per tensor record; validate <= 1.5x inspect (also among the siblings); validate --deep <=
1.5x inspect + one CRC pass; shard folder inspect <= 1.0x and validate <= 1.5x the safe_open
listing; doubling the tensor count at most doubles each time (slope <= 2). Exits 1 when a
target is missed (unless --no-judge).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_common import REPO_ROOT, compile_bytecode, repo_env, run_measured, warm_page_cache  # noqa: E402

PY = sys.executable
MIB = 2 ** 20
LOAD = "import sys, torch; torch.load(sys.argv[1], mmap=True, weights_only=True)"
SAFE_OPEN = ("import sys, glob\nfrom safetensors import safe_open\nn = 0\n"
             "for p in sorted(glob.glob(sys.argv[1] + '/*.safetensors')):\n"
             "    with safe_open(p, 'numpy') as f: n += len(list(f.keys()))\nprint(n)")
DCP_META = ("import sys\nfrom torch.distributed.checkpoint import FileSystemReader\n"
            "print(len(FileSystemReader(sys.argv[1]).read_metadata().state_dict_metadata))")
CRC = ("import sys, time, zlib\nt = time.perf_counter(); c = 0\nwith open(sys.argv[1], 'rb') as f:\n"
       "    while b := f.read(1 << 24): c = zlib.crc32(b, c)\nprint(time.perf_counter() - t)")
# The unpickling floor: data.pkl through a C unpickler whose callbacks are Python functions (as a
# restricted unpickler's are), then through ckptkit's own; in-process seconds, no start-up.
FLOOR = """import pickle, sys, time, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    data = z.read(next(n for n in z.namelist() if n.endswith('/data.pkl')))
class Bare(pickle.Unpickler):
    def find_class(self, module, name):
        return lambda *a, **k: (module, name, a)
    def persistent_load(self, pid):
        return pid
import io
t = time.perf_counter(); Bare(io.BytesIO(data)).load(); bare = time.perf_counter() - t
from ckptkit.formats.torch_zip import decode_data_pkl, read_archive_index
from pathlib import Path
index = read_archive_index(Path(sys.argv[1]))
t = time.perf_counter(); decode_data_pkl(Path(sys.argv[1]), index); ours = time.perf_counter() - t
print(bare, ours)"""


@dataclass
class Case:
    label: str
    cmd: list[str]
    env: dict[str, str] | None = None
    seconds: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def peak_mib(self) -> float:
        return max(self.rss) / MIB


def ck(*args: object) -> list[str]:
    return [PY, "-m", "ckptkit", *map(str, args)]


def build(kind: str, target: Path, *numbers: int) -> Path:
    if not target.exists():
        subprocess.run([PY, str(REPO_ROOT / "scripts" / "bench_scale_data.py"), kind, str(target),
                        *map(str, numbers)], check=True, env=repo_env())
    return target


def build_all(root: Path, args: argparse.Namespace) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = {"pth": build("pth", root / "big.pth", args.params),
             "pth_b": build("pth", root / "big_b.pth", args.params, 3),
             "half": build("pth", root / "half.pth", args.params // 2),
             "half_b": build("pth", root / "half_b.pth", args.params // 2, 3),
             "shards": build("shards", root / "shards", args.shard_tensors, 10),
             "half_shards": build("shards", root / "half_shards", args.shard_tensors // 2, 10),
             "dcp": build("dcp", root / "dcp", args.chunks)}
    run = root / "run"
    if not run.exists():      # the target among --siblings checkpoints of the same run (hard links)
        run.mkdir()
        for k in range(args.siblings):
            os.link(paths["pth"], run / f"checkpoint_step_{100 * (k + 1)}.pt")
        os.link(paths["pth"], run / f"checkpoint_step_{100 * (args.siblings + 1)}.pt")
    paths["run"] = run
    paths["target"] = run / f"checkpoint_step_{100 * (args.siblings + 1)}.pt"
    for folder in ("alone", "alone_half"):   # each .pth alone in a folder of its own (ls, validate)
        (root / folder).mkdir(exist_ok=True)
    for name, src in (("alone/big.pth", "pth"), ("alone_half/half.pth", "half")):
        if not (root / name).exists():
            os.link(paths[src], root / name)
    paths["alone"], paths["alone_half"] = root / "alone/big.pth", root / "alone_half/half.pth"
    return paths


def cases_for(p: dict[str, Path], out: Path, tag: str) -> dict[str, Case]:
    env = repo_env()
    c = {
        "load": Case("torch.load(mmap=True, weights_only=True)", [PY, "-c", LOAD, str(p["pth"])]),
        "inspect": Case("ckptkit inspect", ck("inspect", p["alone"]), env),
        "validate": Case("ckptkit validate", ck("validate", p["alone"]), env),
        "validate_run": Case("ckptkit validate (among siblings)", ck("validate", p["target"]), env),
        "deep": Case("ckptkit validate --deep", ck("validate", "--deep", p["alone"]), env),
        "ls": Case("ckptkit ls (folder of one)", ck("ls", p["alone"].parent), env),
        "diff": Case("ckptkit diff (3 tensors differ)", ck("diff", p["pth"], p["pth_b"]), env),
        "convert": Case("ckptkit convert -> .safetensors",
                        ck("convert", "--force", "--weights-only", p["pth"], out / "c.safetensors"), env),
        "half_inspect": Case("inspect, half the tensors", ck("inspect", p["alone_half"]), env),
        "half_validate": Case("validate, half the tensors", ck("validate", p["alone_half"]), env),
        "half_deep": Case("validate --deep, half", ck("validate", "--deep", p["alone_half"]), env),
        "half_ls": Case("ls, half the tensors", ck("ls", p["alone_half"].parent), env),
        "half_diff": Case("diff, half the tensors", ck("diff", p["half"], p["half_b"]), env),
        "half_convert": Case("convert, half the tensors",
                             ck("convert", "--force", "--weights-only", p["half"], out / "h.safetensors"), env),
        "safe_open": Case("safe_open key listing (10 shards)", [PY, "-c", SAFE_OPEN, str(p["shards"])]),
        "sh_inspect": Case("ckptkit inspect (shards)", ck("inspect", p["shards"]), env),
        "sh_validate": Case("ckptkit validate (shards)", ck("validate", p["shards"]), env),
        "sh_ls": Case("ckptkit ls (shards)", ck("ls", p["shards"]), env),
        "half_sh_inspect": Case("inspect shards, half", ck("inspect", p["half_shards"]), env),
        "half_sh_validate": Case("validate shards, half", ck("validate", p["half_shards"]), env),
        "dcp_meta": Case("DCP read_metadata", [PY, "-c", DCP_META, str(p["dcp"])]),
        "dcp_inspect": Case("ckptkit inspect (DCP)", ck("inspect", p["dcp"]), env),
        "dcp_validate": Case("ckptkit validate (DCP)", ck("validate", p["dcp"]), env),
    }
    for case in c.values():
        case.label = f"{case.label}{tag}"
    return c


def measure(cases: dict[str, Case], repeat: int) -> None:
    """Interleaved: every case once per round, so a slow spell of the machine hits all alike."""
    for _ in range(repeat):
        for case in cases.values():
            m = run_measured(case.cmd, case.env)
            if m.returncode not in (0, 1):
                sys.exit(f"{case.label} failed (exit {m.returncode}): {' '.join(case.cmd)}\n{m.stdout[-500:]}")
            case.seconds.append(m.seconds)
            case.rss.append(m.peak_rss_bytes)


def in_process(code: str, path: Path) -> list[float]:
    out = subprocess.run([PY, "-c", code, str(path)], capture_output=True, text=True, check=True, env=repo_env())
    return [float(x) for x in out.stdout.split()]


def report(c: dict[str, Case], records: int, crc_s: float, floor: list[float], tag: str) -> bool:
    ok = True

    def row(key: str, base: str, ratio_target: float | None = None, extra_s: float = 0.0,
            rss_target: float | None = None) -> None:
        nonlocal ok
        case, ref = c[key], c[base]
        ratio = case.median / (ref.median + extra_s) if extra_s else case.median / ref.median
        verdict = ""
        if ratio_target is not None:
            hit = ratio <= ratio_target
            ok &= hit
            verdict = f"target <= {ratio_target}x{' + CRC pass' if extra_s else ''} {'OK' if hit else 'MISSED'}"
        if rss_target is not None:
            hit = case.peak_mib <= rss_target
            ok &= hit
            verdict += f"; RSS target <= {rss_target:.0f} MiB {'OK' if hit else 'MISSED'}"
        print(f"  {case.label:<46} {case.median:8.3f} s  {case.peak_mib:7.1f} MiB  "
              f"{ratio:6.3f}x {ref.label.split(' (')[0]:<22} {verdict}")

    def slope(key: str, half: str) -> None:
        nonlocal ok
        s = c[key].median / c[half].median
        ok &= s <= 2.0
        verdict = "OK" if s <= 2.0 else "MISSED"
        print(f"  slope {c[key].label:<40} {s:6.2f} (time at 2N / time at N; target <= 2) {verdict}")

    print(f"\n.pth of {records:,} tensor records{tag}: medians of interleaved runs, peak RSS the highest seen")
    for key in ("load",):
        print(f"  {c[key].label:<46} {c[key].median:8.3f} s  {c[key].peak_mib:7.1f} MiB")
    row("inspect", "load", 0.25, rss_target=64 + records / 1024)
    row("validate", "inspect", 1.5)
    row("validate_run", "inspect", 1.5)
    row("deep", "inspect", 1.5, extra_s=crc_s)
    for key in ("ls", "diff", "convert"):
        row(key, "load")
    print(f"  one CRC-32 pass over the file (in-process)      {crc_s:8.3f} s")
    print(f"  unpickling floor, bare C unpickler (in-process) {floor[0]:8.3f} s   "
          f"ckptkit's decode_data_pkl {floor[1]:8.3f} s ({floor[1] / floor[0]:.2f}x the floor)")
    for key in ("inspect", "validate", "deep", "ls", "diff", "convert"):
        slope(key, f"half_{key}")
    print(f"\nsafetensors folder, 10 shards{tag}")
    print(f"  {c['safe_open'].label:<46} {c['safe_open'].median:8.3f} s  {c['safe_open'].peak_mib:7.1f} MiB")
    row("sh_inspect", "safe_open", 1.0)
    row("sh_validate", "safe_open", 1.5)
    row("sh_ls", "safe_open")
    slope("sh_inspect", "half_sh_inspect")
    slope("sh_validate", "half_sh_validate")
    print(f"\nDCP folder{tag}")
    print(f"  {c['dcp_meta'].label:<46} {c['dcp_meta'].median:8.3f} s  {c['dcp_meta'].peak_mib:7.1f} MiB")
    row("dcp_inspect", "dcp_meta")
    row("dcp_validate", "dcp_meta")
    return ok


def run_in(root: Path, args: argparse.Namespace, tag: str) -> bool:
    paths = build_all(root, args)
    out = root / "out"
    out.mkdir(exist_ok=True)
    for path in (paths["pth"], paths["pth_b"], paths["half"], paths["half_b"]):
        warm_page_cache(path)
    cases = cases_for(paths, out, tag)
    measure(cases, args.repeat)
    crc_s = statistics.median(in_process(CRC, paths["pth"])[0] for _ in range(args.repeat))
    floors = [in_process(FLOOR, paths["pth"]) for _ in range(args.repeat)]
    floor = [statistics.median(f[i] for f in floors) for i in range(2)]
    return report(cases, args.params * 4, crc_s, floor, tag)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=20_000, help="parameters (tensor records: 4x)")
    parser.add_argument("--shard-tensors", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=20_000, help="DCP chunks")
    parser.add_argument("--siblings", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="build (and keep) the checkpoints here; default: a temporary folder")
    parser.add_argument("--shm", action="store_true", help="measure from /dev/shm too")
    parser.add_argument("--no-judge", action="store_true", help="exit 0 whatever the ratios (smoke runs)")
    args = parser.parse_args()
    compile_bytecode()
    roots: list[tuple[Path, str, Callable[[], None]]] = []
    tmp = tempfile.mkdtemp(prefix="bench_scale_")
    roots.append((args.dir or Path(tmp), "", lambda: None))
    if args.shm:
        shm = Path(tempfile.mkdtemp(prefix="bench_scale_", dir="/dev/shm"))
        roots.append((shm, " [/dev/shm]", lambda: shutil.rmtree(shm, ignore_errors=True)))
    ok = True
    try:
        for root, tag, _ in roots:
            ok &= run_in(root, args, tag)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for _, _, clean in roots:
            clean()
    print(f"\n{'all targets met' if ok else 'some targets MISSED'}")
    sys.exit(0 if ok or args.no_judge else 1)


if __name__ == "__main__":
    main()
