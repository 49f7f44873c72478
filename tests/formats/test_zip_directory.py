from __future__ import annotations

import zipfile
from pathlib import Path

from ckptkit.formats import zip_directory as zd


def test_the_end_record_positions_are_the_ones_zipfiles_private_search_returns() -> None:
    # zip_directory spells these out (typeshed omits zipfile's private names); if a Python
    # release moved them, every archive would silently fall back to zipfile's slower reader.
    private = vars(zipfile)
    assert (zd._ECD_SIGNATURE, zd._ECD_SIZE, zd._ECD_OFFSET, zd._ECD_LOCATION) == (
        private["_ECD_SIGNATURE"], private["_ECD_SIZE"], private["_ECD_OFFSET"], private["_ECD_LOCATION"])
    assert (zd._ZIP64_END_MAGIC, zd._ZIP64_END_SIZE, zd._ZIP64_LOCATOR_SIZE) == (
        private["stringEndArchive64"], private["sizeEndCentDir64"], private["sizeEndCentDir64Locator"])
    assert zd._end_record is private["_EndRecData"]


def test_each_members_file_size_is_the_one_zipfile_reads_and_none_for_a_missing_member(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as z:       # sizes that differ from each other and from every other field
        for i, size in enumerate((0, 3, 70_000)):
            z.writestr(f"archive/data/{i}", b"x" * size)
    with open(path, "rb") as f:
        directory = zd.read_directory(f)
    assert directory is not None
    with zipfile.ZipFile(path) as z:
        expected = {i.filename: i.file_size for i in z.infolist()}
    assert {name: directory.file_size(name) for name in directory} == expected == {
        "archive/data/0": 0, "archive/data/1": 3, "archive/data/2": 70_000}
    assert directory.file_size("archive/data/9") is None
