from __future__ import annotations

import json
from pathlib import Path

import pytest

import ckptkit.storage.manifest as manifest_module
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.storage.crc import file_crc32
from ckptkit.storage.manifest import (
    ChecksumWriter,
    Manifest,
    ManifestFile,
    describe_files,
    manifest_path,
    manifest_problems,
    read_manifest,
    write_manifest,
)


def _manifest_for(path: Path) -> Manifest:
    return Manifest(checkpoint=path.name, files=describe_files(path), kind="periodic", global_step=20,
                    progress={"epoch": 1, "batch_in_epoch": 9},
                    metric={"name": "val_loss", "value": 2.5, "mode": "min"})


def test_the_checksum_writer_counts_the_bytes_and_crc_of_what_reached_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    with open(path, "wb") as f:
        writer = ChecksumWriter(f)
        writer.write(b"hello ")
        writer.write(memoryview(b"world"))
    assert writer.size == 11
    assert writer.crc32 == file_crc32(path) == 0x0D4A1185


def test_the_checksum_writer_starts_the_disk_on_every_span_it_was_asked_to(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(manifest_module, "start_writeback", lambda fd, offset, length: started.append((offset, length)))
    path = tmp_path / "x.bin"
    with open(path, "wb") as f:
        writer = ChecksumWriter(f, writeback_every=10)
        for piece in (b"a" * 4, b"b" * 7, b"c" * 12, b"d" * 3):
            writer.write(piece)
    # spans of at least 10 bytes, back to back from byte 0; the 3-byte tail is left to the fsync
    assert started == [(0, 11), (11, 12)]
    assert path.read_bytes() == b"a" * 4 + b"b" * 7 + b"c" * 12 + b"d" * 3
    assert writer.size == 26 and writer.crc32 == file_crc32(path)


def test_a_manifest_is_written_beside_its_checkpoint_and_read_back_equal(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint_step_20.pt"
    ckpt.write_bytes(b"x" * 100)
    manifest = _manifest_for(ckpt)
    assert write_manifest(ckpt, manifest) == tmp_path / "checkpoint_step_20.pt.manifest.json"
    assert read_manifest(ckpt) == manifest
    assert json.loads(manifest_path(ckpt).read_text())["files"] == [
        {"path": "checkpoint_step_20.pt", "size": 100, "crc32": f"{file_crc32(ckpt):08x}"}
    ]


def test_a_folder_manifest_lists_every_file_relative_to_the_run_directory(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint_step_4"
    folder.mkdir()
    (folder / ".metadata").write_bytes(b"m")
    (folder / "__0_0.distcp").write_bytes(b"shard")
    assert [(f.path, f.size) for f in describe_files(folder)] == [
        ("checkpoint_step_4/.metadata", 1), ("checkpoint_step_4/__0_0.distcp", 5)
    ]


def test_a_missing_manifest_reads_as_none(tmp_path: Path) -> None:
    assert read_manifest(tmp_path / "best_model.pt") is None


def test_an_unparsable_manifest_is_a_corrupt_checkpoint_error_naming_it(tmp_path: Path) -> None:
    manifest_path(tmp_path / "a.pt").write_text("{not json")
    with pytest.raises(CorruptCheckpointError, match="a.pt.manifest.json: manifest is not valid JSON"):
        read_manifest(tmp_path / "a.pt")


def test_truncation_and_flipped_bits_are_reported_against_the_manifest(tmp_path: Path) -> None:
    ckpt = tmp_path / "a.pt"
    ckpt.write_bytes(bytes(range(256)))
    manifest = _manifest_for(ckpt)
    assert manifest_problems(ckpt, manifest) == []
    data = bytearray(ckpt.read_bytes())
    data[100] ^= 0x04
    ckpt.write_bytes(bytes(data))
    found = manifest_problems(ckpt, manifest)[0]
    assert found.startswith(f"a.pt: CRC-32 {file_crc32(ckpt):08x} on disk, the manifest says")
    ckpt.write_bytes(bytes(range(200)))
    assert manifest_problems(ckpt, manifest) == [
        "a.pt: 200 bytes on disk, the manifest says 256 (truncated or overwritten)"]
    ckpt.unlink()
    assert manifest_problems(ckpt, manifest) == ["a.pt: missing (the manifest lists 256 bytes)"]


def test_manifest_size_is_the_sum_of_its_files() -> None:
    files = (ManifestFile("a", 3, 0), ManifestFile("b", 4, 0))
    assert Manifest(checkpoint="x", files=files).size == 7
