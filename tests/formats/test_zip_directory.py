from __future__ import annotations

import zipfile

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
