"""Fuzz every read command of ckptkit with mutants of the repository's fixtures.

    python scripts/fuzz_readers.py --mutants 10000 --seed 1          # the campaign
    python scripts/fuzz_readers.py --profile ci                      # the short CI profile

Each mutant is one fixture (a file, or the checkpoint folder holding it) with one mutation:
truncation, bit flips, zip member shuffles/drops, damaged header lengths (zip, safetensors, pickle
frames), a data.pkl replaced by deep nesting, a memo DAG, colliding dict keys, or a huge FRAME,
a FRAME header inserted at a random spot, a second pickle appended, or zip flag bits / CRC-32
fields changed (what zipfile refuses and PyTorch reads).
Every read command (inspect, validate, validate --deep, ls on the folder, diff against the original) runs on it in
a forked child under a time limit (SIGALRM, then SIGKILL) and an address-space limit of 512 MiB
above the parent's size. The child's audit hook counts code executions: a real `pickle.find_class`,
os.system, subprocess, exec of code, or the marker file a payload would touch.

Prints counts of: clean exits (0/1/2), tracebacks, hangs, over-limit memory, code executions,
and the first failures with how to reproduce them. Exit status 1 if any of the last four is non-zero.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from click.testing import Result

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # one BLAS thread: no per-thread buffers in children
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT / "tests" / "fixtures"
MARKER = Path(tempfile.gettempdir()) / "ckptkit-fuzz-EXECUTED"
COMMANDS = ("inspect", "validate", "deep", "ls", "diff")
MUTATIONS = ("truncate", "bitflip", "zip_shuffle", "header_length", "deep_nesting", "memo_dag",
             "hash_flood", "huge_frame", "frame_insert", "trailing_pickle", "zip_flags")
# ("exec" is left out: every import raises it for the module's own code)
_EXEC_EVENTS = {"pickle.find_class", "os.system", "subprocess.Popen", "os.exec", "os.posix_spawn",
                "os.spawn", "os.fork", "webbrowser.open"}


def seeds() -> list[tuple[Path, Path]]:
    """(file to mutate, unit to run commands on): the file itself, or its checkpoint folder."""
    from ckptkit.core.errors import CkptkitError
    from ckptkit.formats import detect_format

    out = []
    for f in sorted(FIXTURES.rglob("*")):
        if not f.is_file() or f.stat().st_size > 2_000_000 or f.suffix in (".md", ".py"):
            continue
        unit = f
        try:
            detect_format(f.parent)
            unit = f.parent
        except CkptkitError:
            pass
        out.append((f, unit))
    return out


# -- mutations: bytes -> bytes --------------------------------------------------------------
def _payload_pickle(rng: random.Random, kind: str) -> bytes:
    if kind == "deep_nesting":
        depth = rng.choice([200, 5_000, 200_000])
        style = rng.randrange(3)
        if style == 0:
            return b"\x80\x02)" + b"\x85" * depth + b"."          # TUPLE1 chain
        if style == 1:
            return b"\x80\x02" + b"(" * depth + b"."               # open MARKs
        return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    if kind == "memo_dag":
        out = bytearray(b"\x80\x02]q\x00")
        for i in range(1, rng.choice([30, 64, 120])):
            out += b"]" + b"h" + bytes([(i - 1) % 256]) + b"a" + b"h" + bytes([(i - 1) % 256]) + b"a"
            out += b"q" + bytes([i % 256])
        return bytes(out) + b"."
    if kind == "hash_flood":
        m = (1 << 61) - 1
        n = rng.choice([5_000, 50_000])
        body = bytearray(b"\x80\x02}(")
        for i in range(n):
            body += b"\x8a\x10" + (i * m).to_bytes(16, "little", signed=True) + b"N"
        return bytes(body) + b"u."
    # huge_frame
    return b"\x80\x04\x95" + struct.pack("<Q", rng.choice([1 << 40, 1 << 62, 2**64 - 1])) + b"N."


def _frame_insert(data: bytes, rng: random.Random) -> bytes:
    """A FRAME header at a random spot: misaligned frames (protocol 4-5)."""
    at = rng.randrange(0, max(1, len(data)))
    size = rng.choice([0, 1, 2, 9, len(data) - at, rng.getrandbits(16)])
    return data[:at] + b"\x95" + struct.pack("<Q", max(size, 0)) + data[at:]


def _trailing_pickle(data: bytes, rng: random.Random) -> bytes:
    """A second pickle behind the first: harmless, a payload, or a memo DAG."""
    second = rng.choice([b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x04true\x85R.",
                         b"\x80\x02}q\x00.", _payload_pickle(rng, "memo_dag")])
    return data + second


def _zip_flags(data: bytes, rng: random.Random) -> bytes:
    """Flag bits or CRC-32 of a zip header: what zipfile refuses and PyTorch reads."""
    out = bytearray(data)
    spots = [i for i in range(len(out) - 4) if out[i:i + 4] in (b"PK\x03\x04", b"PK\x01\x02")]
    if spots:
        i = rng.choice(spots)
        field = rng.choice([6, 8, 14, 16]) if out[i + 2] == 3 else rng.choice([8, 10, 16, 18])
        if i + field + 4 <= len(out):
            value = rng.choice([0x1, 0x20, 0x40, 0x8, rng.getrandbits(16)])
            out[i + field:i + field + 2] = struct.pack("<H", value)
    return bytes(out)


_READER_MUTATIONS = {"frame_insert": _frame_insert, "trailing_pickle": _trailing_pickle, "zip_flags": _zip_flags}


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    if kind in _READER_MUTATIONS:
        return _READER_MUTATIONS[kind](data, rng)
    if kind == "truncate":
        return data[: rng.randrange(0, max(1, len(data)))]
    if kind == "bitflip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            if out:
                i = rng.randrange(len(out))
                out[i] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == "header_length":
        out = bytearray(data)
        if data.startswith(b"PK"):
            spots = [i for i in range(len(out) - 4) if out[i:i + 4] in (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06")]
            if spots:
                i = rng.choice(spots) + rng.choice([10, 12, 18, 22, 26, 28, 30, 42])
                if i + 4 <= len(out):
                    out[i:i + 4] = struct.pack("<I", rng.choice([0, 1, 0xFFFF, 0xFFFFFFFF, rng.getrandbits(32)]))
        elif len(out) >= 8:
            out[0:8] = struct.pack("<Q", rng.choice([0, 7, len(data) * 2, 1 << 40, rng.getrandbits(64)]))
        return bytes(out)
    if kind == "zip_shuffle":
        return data
    return _payload_pickle(rng, kind)


def zip_mutate(data: bytes, kind: str, rng: random.Random) -> bytes | None:
    """Mutations that rewrite a zip with valid checksums, so damage reaches the readers inside."""
    try:
        zin = zipfile.ZipFile(io.BytesIO(data))
        members = [(i, zin.read(i)) for i in zin.infolist()]
    except Exception:
        return None
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
        if kind == "zip_shuffle":
            action = rng.randrange(3)
            if action == 0:
                rng.shuffle(members)
            elif action == 1 and len(members) > 1:
                a, b = rng.sample(range(len(members)), 2)
                (ia, da), (ib, db) = members[a], members[b]
                members[a], members[b] = (ia, db), (ib, da)
            elif members:
                members.pop(rng.randrange(len(members)))
            for info, body in members:
                zout.writestr(info.filename, body)
        else:
            for info, body in members:
                if info.filename.endswith("data.pkl"):
                    body = (mutate(body, kind, rng) if kind in ("bitflip", "frame_insert", "trailing_pickle")
                            else _payload_pickle(rng, kind))
                zout.writestr(info.filename, body)
    return buf.getvalue()


# -- running one command in a child -----------------------------------------------------------
def run_child(argv: list[str], time_limit: int, mem_limit: int) -> str:
    """One command in a forked child: 'ok', 'traceback', 'hang', 'memory' or 'exec'."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # child
        os.close(r)
        status = _child_status(argv, time_limit, mem_limit)
        os.write(w, status.encode())
        os._exit(0)
    os.close(w)
    return _wait_for_child(pid, r, time_limit)


def _child_status(argv: list[str], time_limit: int, mem_limit: int) -> str:
    """In the child: run the command under the memory and time limits, watching for exec."""
    try:
        resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
        executed: list[str] = []

        def hook(event: str, args: tuple) -> None:
            if event in _EXEC_EVENTS or event.startswith("os.exec") or event.startswith("os.spawn"):
                executed.append(event)
        sys.addaudithook(hook)
        signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError()))
        signal.alarm(time_limit)
        from click.testing import CliRunner

        from ckptkit.cli import main
        result = CliRunner().invoke(main, argv)
        signal.alarm(0)
        return _classify(result, executed)
    except TimeoutError:
        return "hang"
    except MemoryError:
        return "memory"
    except BaseException:
        return "traceback"


def _classify(result: Result, executed: list[str]) -> str:
    """The verdict on one finished CliRunner result."""
    exc = result.exception
    if executed or MARKER.exists():
        return "exec"
    if isinstance(exc, TimeoutError):
        return "hang"
    if isinstance(exc, MemoryError) or "MemoryError" in result.output:
        return "memory"
    if exc is not None and not isinstance(exc, SystemExit):
        return "traceback"
    if result.exit_code in (0, 1, 2) and "Traceback" not in result.output:
        return "ok"
    return "traceback"


def _wait_for_child(pid: int, r: int, time_limit: int) -> str:
    """In the parent: the child's verdict, or 'hang' once it outlives its time limit."""
    deadline = time.monotonic() + time_limit + 5
    while True:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return "hang"
        time.sleep(0.005)
    out = os.read(r, 64).decode() or ("memory" if os.WIFSIGNALED(code) else "traceback")
    os.close(r)
    return out


# -- the campaign ---------------------------------------------------------------------------
def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutants", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", choices=("full", "ci"), default="full")
    parser.add_argument("--time-limit", type=int, default=10)
    parser.add_argument("--mem-mib", type=int, default=512)
    parser.add_argument("--workdir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--progress", type=int, default=0, help="print running counts every N mutants")
    parser.add_argument("--only", type=int, metavar="N",
                        help="reproduce one failure: make mutants as the campaign does, run commands on mutant N alone")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="with --only: copy mutant N (and its folder) here")
    args = parser.parse_args()
    if args.profile == "ci":
        args.mutants = min(args.mutants, 24)
    if args.only is not None:
        args.mutants = args.only + 1
    return args


def _make_mutant(work: Path, file: Path, unit: Path, kind: str, rng: random.Random) -> Path:
    """Copy `unit` (a file or folder) into `work`, damage its `file` by `kind`; the copy's path."""
    work.mkdir()
    target = work / unit.name
    if unit.is_dir():
        shutil.copytree(unit, target)
        victim = target / file.relative_to(unit)
    else:
        shutil.copy2(unit, target)
        victim = target
    data = victim.read_bytes()
    new = zip_mutate(data, kind, rng) if data.startswith(b"PK") and kind not in (
        "truncate", "header_length", "zip_flags") and (kind != "bitflip" or rng.random() < 0.5) else None
    victim.write_bytes(new if new is not None else mutate(data, kind, rng))
    return target


def _run_commands(args: argparse.Namespace, n: int, work: Path, file: Path, unit: Path, target: Path,
                  kind: str, mem_limit: int, counts: dict[str, int], failures: list[str]) -> None:
    """Run this mutant's commands, counting verdicts and keeping the first 30 failures."""
    commands = COMMANDS if args.profile == "full" or n % 2 == 0 else COMMANDS[:2]
    for command in commands:
        argv = {"inspect": ["inspect", str(target)], "validate": ["validate", str(target)],
                "deep": ["validate", "--deep", str(target)], "ls": ["ls", str(work)],
                "diff": ["diff", str(unit), str(target)]}[command]
        status = run_child(argv, args.time_limit, mem_limit)
        counts[status] += 1
        if status != "ok":
            line = f"{status}: {command} on {kind} of {file.relative_to(ROOT)} (--seed {args.seed}, mutant {n})"
            if len(failures) < 30:
                failures.append(line)
            if args.progress:
                print(line, file=sys.stderr, flush=True)


def _print_report(args: argparse.Namespace, counts: dict[str, int], failures: list[str], elapsed: float) -> int:
    report = {"mutants": args.mutants if args.only is None else 1, "runs": sum(counts.values()),
              "seconds": round(elapsed, 1),
              "clean_exits": counts["ok"], "tracebacks": counts["traceback"], "hangs": counts["hang"],
              "over_limit_memory": counts["memory"], "code_executions": counts["exec"], "failures": failures}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['mutants']} mutants, {report['runs']} command runs in {elapsed:.0f} s: "
              f"{counts['ok']} clean exits, {counts['traceback']} tracebacks, {counts['hang']} hangs, "
              f"{counts['memory']} over-limit memory, {counts['exec']} code executions")
        for line in failures:
            print("  " + line)
    return 0 if counts["ok"] == report["runs"] else 1


def _prewarm(pool: list[tuple[Path, Path]]) -> None:
    """Run every command once in the parent on one fixture of each kind, so that the modules
    they load lazily are imported before forking: a child then costs the command's own work
    (about 0.07 s instead of 0.33 s on this project's fixtures)."""
    from click.testing import CliRunner

    from ckptkit.cli import main

    kinds: dict[tuple[str, bool], tuple[Path, Path]] = {}
    for file, unit in pool:
        kinds.setdefault((file.suffix, unit.is_dir()), (file, unit))
    for _, unit in kinds.values():
        for argv in (["inspect", str(unit)], ["validate", str(unit)], ["validate", "--deep", str(unit)],
                     ["ls", str(unit.parent)], ["diff", str(unit), str(unit)]):
            CliRunner().invoke(main, argv)


def main() -> int:
    args = _parse_args()
    import ckptkit.cli  # noqa: F401  (imported once, before forking)
    try:   # `diff` compares values with torch: import it once here, not in every child (seconds each)
        import numpy  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        pass

    rng = random.Random(args.seed)
    pool = seeds()
    _prewarm(pool)
    vsz = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    mem_limit = vsz + args.mem_mib * (1 << 20)
    counts = {k: 0 for k in ("ok", "traceback", "hang", "memory", "exec")}
    failures: list[str] = []
    MARKER.unlink(missing_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n in range(args.mutants):
            file, unit = rng.choice(pool)
            kind = MUTATIONS[n % len(MUTATIONS)] if args.profile == "ci" else rng.choice(MUTATIONS)
            work = Path(tmp) / f"m{n}"
            target = _make_mutant(work, file, unit, kind, rng)
            if args.only is not None and n != args.only:
                shutil.rmtree(work, ignore_errors=True)
                continue
            if args.keep is not None:
                shutil.copytree(work, args.keep / work.name, dirs_exist_ok=True)
                print(f"mutant {n}: {kind} of {file.relative_to(ROOT)} kept in {args.keep / work.name}")
            _run_commands(args, n, work, file, unit, target, kind, mem_limit, counts, failures)
            shutil.rmtree(work, ignore_errors=True)
            if args.progress and (n + 1) % args.progress == 0:
                print(f"[{n + 1} mutants, {time.monotonic() - started:.0f} s] {counts}", file=sys.stderr, flush=True)
    return _print_report(args, counts, failures, time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
