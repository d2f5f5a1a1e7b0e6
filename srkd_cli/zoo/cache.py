"""Where downloaded weights live: srkd's URL cache, the Hugging Face cache, and file hashes."""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import urllib.parse
from pathlib import Path
from typing import Optional, Union

from .schema import Source

CHUNK = 1 << 20  # bytes per read, for hashing and downloading
_TRUE = {"1", "ON", "YES", "TRUE"}

PathLike = Union[str, "os.PathLike[str]"]


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def offline_from_env() -> bool:
    """HF_HUB_OFFLINE, read now: huggingface_hub itself reads it only once, at import."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def url_cache_dir() -> Path:
    """Where `url` sources are cached: $SRKD_CACHE/url, else $XDG_CACHE_HOME/srkd/url, else ~/.cache/srkd/url."""
    root = os.environ.get("SRKD_CACHE")
    if root:
        return Path(root).expanduser() / "url"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "srkd" / "url"


def url_cache_path(src: Source) -> Path:
    # Keyed by content when the hash is known, so moving a file to a new URL reuses the cache.
    key = src.sha256 or hashlib.sha256(src.url.encode()).hexdigest()[:32]
    name = posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(src.url).path)) or "download"
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip(".") or "download"
    return url_cache_dir() / key / name


def _hf_cached(src: Source) -> Optional[Path]:
    import huggingface_hub

    try:
        found = huggingface_hub.try_to_load_from_cache(src.repo_id, src.filename, revision=src.revision)
    except ValueError:  # an invalid repo id: it cannot be cached either
        return None
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def cached_path(src: Source) -> Optional[Path]:
    """The cached file of a remote source, or None (never for a bundled source)."""
    if src.kind == "hf":
        return _hf_cached(src)
    if src.kind == "url":
        p = url_cache_path(src)
        return p if p.is_file() else None
    return None


def delete_cached(path: Path) -> None:
    # A Hugging Face snapshot entry is a symlink to a blob: remove both, or the next run
    # would find the bad blob again.
    target = Path(os.path.realpath(path))
    for p in (path, target):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
