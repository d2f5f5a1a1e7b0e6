"""Downloads: plain URLs into srkd's cache and Hub files through huggingface_hub, with retries."""

from __future__ import annotations

import http.client
import inspect
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Optional

from .. import __version__
from ..atomic import atomic_file
from .cache import CHUNK, url_cache_path
from .failures import SourceFailed, Transient, first_line, hf_failure, http_status_failure
from .schema import Source

DOWNLOAD_TRIES = 3
_BACKOFF_S = 0.5  # wait before the 2nd try; doubles after that
_URL_TIMEOUT_S = 30.0


def _retrying(fetch) -> Path:
    last: Optional[Exception] = None
    for attempt in range(DOWNLOAD_TRIES):
        if attempt:
            time.sleep(_BACKOFF_S * 2 ** (attempt - 1))
        try:
            return fetch()
        except Transient as e:
            last = e
    raise SourceFailed(f"{last} (gave up after {DOWNLOAD_TRIES} tries)")


def _fetch_url_once(src: Source, dest: Path, label: str, bar_cls: type) -> Path:
    req = urllib.request.Request(src.url, headers={"User-Agent": f"srkd/{__version__}"})
    try:
        resp = urllib.request.urlopen(req, timeout=_URL_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()
        raise http_status_failure(e.code, "the file")
    except ValueError as e:  # e.g. no host in the URL
        raise SourceFailed(f"invalid URL ({first_line(e)})")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise Transient(f"cannot connect ({first_line(reason) if isinstance(reason, BaseException) else reason})")
    with resp:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        try:
            with atomic_file(dest) as out, bar_cls(total=total, desc=label) as bar:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except http.client.IncompleteRead as e:
                        received += len(e.partial)
                        chunk = b""
                    except (OSError, http.client.HTTPException) as e:
                        raise Transient(f"connection lost after {received} bytes ({first_line(e)})")
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                if total is not None and received != total:  # inside: the partial file is never published
                    raise Transient(f"download cut off after {received} of {total} bytes")
        except OSError as e:  # the cache folder: not creatable, not writable, full
            raise SourceFailed(f"cannot write to the cache folder {dest.parent} ({e.strerror or e})") from None
    return dest


def download_url(src: Source, label: str, bar_cls: type) -> Path:
    dest = url_cache_path(src)
    return _retrying(lambda: _fetch_url_once(src, dest, label, bar_cls))


def download_hf(src: Source, bar_cls: type, *, local_only: bool) -> Path:
    import huggingface_hub

    kwargs: Dict[str, Any] = dict(revision=src.revision, local_files_only=local_only)
    endpoint = os.environ.get("HF_ENDPOINT")  # huggingface_hub read it at import; honour the current value
    if endpoint:
        kwargs["endpoint"] = endpoint.rstrip("/")
    if "tqdm_class" in inspect.signature(huggingface_hub.hf_hub_download).parameters:
        kwargs["tqdm_class"] = bar_cls

    def fetch() -> Path:
        try:
            return Path(huggingface_hub.hf_hub_download(src.repo_id, src.filename, **kwargs))
        except Exception as e:
            failure = hf_failure(src, e)
            if failure is None:
                raise
            raise failure from e

    if local_only:
        try:
            return fetch()
        except Transient as e:
            raise SourceFailed(str(e))
    return _retrying(fetch)
