from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ckptkit.core.errors import CkptkitError, WriteVerificationError
from ckptkit.storage import atomic
from ckptkit.storage.atomic import (
    TEMP_MARKER,
    atomic_write_dir,
    atomic_write_file,
    default_backup_path,
    is_temporary,
    recover_dir,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _writer(data: bytes):
    return lambda f: f.write(data)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_new_file_gets_exactly_the_written_bytes_and_no_temporary_is_left(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint_step_5.pt"
    atomic_write_file(target, _writer(b"new bytes"))
    assert target.read_bytes() == b"new bytes"
    assert _names(tmp_path) == ["checkpoint_step_5.pt"]


def test_verify_sees_the_complete_temporary_file_beside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    seen: list[tuple[Path, bytes]] = []
    atomic_write_file(target, _writer(b"abc" * 1000), verify=lambda p: seen.append((p, p.read_bytes())))
    (tmp_path_seen, content), = seen
    assert tmp_path_seen.parent == tmp_path
    assert TEMP_MARKER in tmp_path_seen.name and tmp_path_seen.name.startswith("model.pt")
    assert content == b"abc" * 1000


def test_a_rejecting_verify_leaves_the_old_target_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")

    def reject(path: Path) -> None:
        raise WriteVerificationError(path, "read back 2 bytes, expected 3")

    with pytest.raises(WriteVerificationError, match="read back 2 bytes"):
        atomic_write_file(target, _writer(b"new"), verify=reject)
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["model.pt"]


def test_a_failing_writer_leaves_the_old_target_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")

    def half_write(f) -> None:
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_file(target, half_write)
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["model.pt"]


def test_the_backup_keeps_the_old_bytes_and_the_target_gets_the_new(tmp_path: Path) -> None:
    target = tmp_path / "best_model.pt"
    target.write_bytes(b"old")
    backup = default_backup_path(target)
    atomic_write_file(target, _writer(b"new"), backup=backup)
    assert backup.name == "best_model.pt.bak"
    assert backup.read_bytes() == b"old"
    assert target.read_bytes() == b"new"


def test_a_symlinked_targets_backup_holds_the_bytes_not_the_link(tmp_path: Path) -> None:
    """Lightning's save_last="link" makes last.ckpt a link to the newest file: rewriting last.ckpt
    kept the link itself as the backup, which dangles once save_top_k rotates the file away. The
    file the link points to (a hub blob shared by snapshots, say) is never written."""
    real = tmp_path / "epoch=2-step=9.ckpt"
    real.write_bytes(b"old")
    link = tmp_path / "last.ckpt"
    link.symlink_to(real.name)
    backup = default_backup_path(link)
    atomic_write_file(link, _writer(b"new"), backup=backup)
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert real.read_bytes() == b"old"
    assert not backup.is_symlink() and backup.read_bytes() == b"old"
    real.unlink()                           # rotated away: the backup still holds the old bytes
    assert backup.read_bytes() == b"old"
    assert _names(tmp_path) == ["last.ckpt", "last.ckpt.bak"]


def test_the_backup_is_a_copy_when_hard_links_are_refused(tmp_path: Path, monkeypatch) -> None:
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "link", no_links)
    target = tmp_path / "best_model.pt"
    target.write_bytes(b"old" * 100)
    atomic_write_file(target, _writer(b"new"), backup=tmp_path / "keep.pt")
    assert (tmp_path / "keep.pt").read_bytes() == b"old" * 100
    assert target.read_bytes() == b"new"
    assert _names(tmp_path) == ["best_model.pt", "keep.pt"]


def test_an_existing_backup_path_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    (tmp_path / "model.pt.bak").write_bytes(b"older")
    with pytest.raises(CkptkitError, match="backup path already exists"):
        atomic_write_file(target, _writer(b"new"), backup=tmp_path / "model.pt.bak")
    assert target.read_bytes() == b"old"
    assert (tmp_path / "model.pt.bak").read_bytes() == b"older"


def test_no_backup_is_made_when_there_was_no_old_target(tmp_path: Path) -> None:
    atomic_write_file(tmp_path / "model.pt", _writer(b"new"), backup=tmp_path / "model.pt.bak")
    assert _names(tmp_path) == ["model.pt"]


def test_default_backup_paths_count_up_past_existing_ones(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pth"
    assert default_backup_path(target) == tmp_path / "ckpt.pth.bak"
    (tmp_path / "ckpt.pth.bak").write_bytes(b"")
    (tmp_path / "ckpt.pth.bak.1").write_bytes(b"")
    assert default_backup_path(target) == tmp_path / "ckpt.pth.bak.2"


def test_a_replaced_file_keeps_the_old_files_permissions(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    atomic_write_file(target, _writer(b"new"))
    assert os.stat(target).st_mode & 0o777 == 0o640


def test_temporary_names_are_recognised_by_their_marker() -> None:
    assert is_temporary(Path("runs/x/checkpoint_step_5.pt.ckptkit-tmp-new-0a1b2c"))
    assert is_temporary(Path("checkpoint-500.ckptkit-tmp-old-ffff"))
    assert not is_temporary(Path("runs/x.ckptkit-tmp-a/checkpoint_step_5.pt"))
    assert not is_temporary(Path("checkpoint_step_5.pt"))


def _populate(files: dict[str, bytes]):
    def populate(folder: Path) -> None:
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)

    return populate


def _read_tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_new_folder_gets_every_populated_file(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint-500"
    atomic_write_dir(target, _populate({"model.safetensors": b"m", "sub/optimizer.pt": b"o"}))
    assert _read_tree(target) == {"model.safetensors": b"m", "sub/optimizer.pt": b"o"}
    assert _names(tmp_path) == ["checkpoint-500"]


@pytest.mark.parametrize("exchange_supported", [True, False])
def test_a_replaced_folder_moves_the_old_one_to_the_backup(tmp_path: Path, monkeypatch, exchange_supported) -> None:
    if not exchange_supported:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "checkpoint-500"
    atomic_write_dir(target, _populate({"a.bin": b"old"}))
    atomic_write_dir(target, _populate({"a.bin": b"new", "b.bin": b"more"}), backup=tmp_path / "checkpoint-500.bak")
    assert _read_tree(target) == {"a.bin": b"new", "b.bin": b"more"}
    assert _read_tree(tmp_path / "checkpoint-500.bak") == {"a.bin": b"old"}
    assert _names(tmp_path) == ["checkpoint-500", "checkpoint-500.bak"]


@pytest.mark.parametrize("exchange_supported", [True, False])
def test_a_replaced_folder_without_backup_leaves_only_the_new_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange_supported: bool) -> None:
    if not exchange_supported:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "ckpt"
    atomic_write_dir(target, _populate({"a.bin": b"old"}))
    atomic_write_dir(target, _populate({"a.bin": b"new"}))
    assert _read_tree(target) == {"a.bin": b"new"}
    assert _names(tmp_path) == ["ckpt"]


def test_a_rejected_folder_leaves_the_old_folder_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    atomic_write_dir(target, _populate({"a.bin": b"old"}))

    def reject(path: Path) -> None:
        assert _read_tree(path) == {"a.bin": b"new"}
        raise WriteVerificationError(path, "a.bin differs")

    with pytest.raises(WriteVerificationError):
        atomic_write_dir(target, _populate({"a.bin": b"new"}), verify=reject)
    assert _read_tree(target) == {"a.bin": b"old"}
    assert _names(tmp_path) == ["ckpt"]


def test_recover_dir_puts_back_the_old_folder_after_a_crash_between_the_two_renames(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "a.bin").write_bytes(b"old")
    aside = tmp_path / f"ckpt{TEMP_MARKER}old-123abc"
    os.rename(target, aside)  # what the crash left: old aside, half-built new one beside it
    (tmp_path / f"ckpt{TEMP_MARKER}new-456def").mkdir()
    assert recover_dir(target) == target
    assert _read_tree(target) == {"a.bin": b"old"}
    assert recover_dir(target) is None


_KILL_CHILD = """
import sys
from pathlib import Path
from ckptkit.storage.atomic import atomic_write_file, atomic_write_dir
target, mode, size = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
payloads = [b"A" * size, b"B" * size]

def write(data):
    if mode == "file":
        atomic_write_file(target, lambda f: [f.write(data[k:k + 65536]) for k in range(0, size, 65536)])
    else:
        def populate(d, data=data):
            for n in range(4):
                (d / f"part{n}.bin").write_bytes(data)
        atomic_write_dir(target, populate)

# Ready only once the write loop is running: a kill during interpreter start-up (slow on a loaded
# machine) would test nothing. From here on, the process spends nearly all its time mid-write.
write(payloads[1])
print("ready", flush=True)
i = 0
while True:
    write(payloads[i % 2])
    i += 1
"""


def _kill_at_random_moments(tmp_path: Path, mode: str, rounds: int, check, *, want: int,
                            max_rounds: int = 60) -> int:
    """Kill a writer `rounds` times, and on until `want` kills have landed mid-write (they left a
    temporary behind) or `max_rounds`; checks what is on disk after every kill. Returns how many
    landed mid-write. (Where a kill lands depends on the disk: a slow directory fsync between
    two writes leaves no temporary, so the count, not the number of rounds, is what is asked for.)"""
    rng = random.Random(8)
    interrupted, done = 0, 0
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    target = tmp_path / ("model.pt" if mode == "file" else "ckpt")
    while done < rounds or (interrupted < want and done < max_rounds):
        child = subprocess.Popen(
            [sys.executable, "-c", _KILL_CHILD, str(target), mode, str(1 << 20)],
            stdout=subprocess.PIPE, env=env,
        )
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.15))
        child.send_signal(signal.SIGKILL)
        child.wait()
        check(target)
        leftovers = [p for p in tmp_path.iterdir() if is_temporary(p)]
        interrupted += bool(leftovers)
        done += 1
        for leftover in leftovers:
            atomic.shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    return interrupted


def test_a_file_write_killed_at_random_moments_leaves_the_old_or_the_new_bytes(tmp_path: Path) -> None:
    size = 1 << 20
    (tmp_path / "model.pt").write_bytes(b"A" * size)

    def check(target: Path) -> None:
        assert target.read_bytes() in (b"A" * size, b"B" * size)

    assert _kill_at_random_moments(tmp_path, "file", rounds=12, check=check, want=3) >= 3


def test_a_folder_write_killed_at_random_moments_leaves_a_whole_old_or_new_folder(tmp_path: Path) -> None:
    size = 1 << 20
    target = tmp_path / "ckpt"
    atomic_write_dir(target, _populate({f"part{n}.bin": b"A" * size for n in range(4)}))

    def check(target: Path) -> None:
        recover_dir(target)
        contents = set(_read_tree(target).values())
        assert sorted(_read_tree(target)) == [f"part{n}.bin" for n in range(4)]
        assert contents in ({b"A" * size}, {b"B" * size})

    assert _kill_at_random_moments(tmp_path, "dir", rounds=8, check=check, want=2) >= 2
