"""`rehydrate restore`, `verify URI` and `archive ls` in a subprocess, on
file:// archives a real store wrote (docs/archive.md): restores compared
with the store's content, damaged archives, bad arguments."""

from __future__ import annotations

import os

import pytest

from rehydrate import ArchiveError, ConfigError
from rehydrate.objstore import open_object_store
from rehydrate.restore import restore


def test_reading_a_file_uri_creates_no_directory(tmp_path):
    where = tmp_path / "nothing" / "here"
    with pytest.raises(ArchiveError) as e:
        restore(where.as_uri(), str(tmp_path / "out"))
    assert e.value.reason == "no_archive"
    assert not where.exists() and not (tmp_path / "nothing").exists()
    open_object_store(where.as_uri(), create=False)
    assert not where.exists()
    open_object_store(where.as_uri())  # (a writer's: made)
    assert where.is_dir()


@pytest.mark.parametrize("uri", ["s3://", "gs://", "s3://?region=x"])
def test_a_uri_naming_no_bucket_is_a_config_error(uri):
    with pytest.raises(ConfigError, match="names no bucket"):
        open_object_store(uri)
