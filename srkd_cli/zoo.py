"""The model zoo: `weights.toml` entries, and turning a model name into a local weights file.

`Zoo.resolve(name)` looks, in this order, at: an existing file of that name; a file bundled
in the package; the local caches (the Hugging Face cache for `hf` sources, srkd's URL cache
for `url` sources); then downloads, source by source in the entry's order. A file with a
known sha256 is verified before it is returned; a cached or downloaded file that fails is
deleted. The schema of `weights.toml` is documented in docs/zoo.md.

This module does not import torch: `srkd models` stays fast.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import inspect
import os
import posixpath
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from . import __version__
from .errors import CheckpointError, ConfigError, ModelNotFoundError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

PACKAGE_DIR = Path(__file__).parent
# Not resolved: srkd_cli/weights.toml may be a symlink to the top-level file, and bundled
# files live next to the package's copy, not next to the link target.
DEFAULT_TOML = PACKAGE_DIR / "weights.toml"
DEFAULT_BUNDLED_DIR = PACKAGE_DIR / "weights"

SOURCE_KINDS = ("bundled", "hf", "url")
DOWNLOAD_TRIES = 3
_BACKOFF_S = 0.5  # wait before the 2nd try; doubles after that
_URL_TIMEOUT_S = 30.0
_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TRUE = {"1", "ON", "YES", "TRUE"}
_WEIGHT_SUFFIXES = {".safetensors", ".pth", ".pt", ".bin", ".ckpt"}

_ENTRY_KEYS = {"arch", "scale", "config", "params", "license", "description", "provenance", "metrics", "sources"}
_SOURCE_KEYS = {"bundled": {"file"}, "hf": {"repo_id", "filename", "revision"}, "url": {"url"}}  # required
_warned_unverified: set = set()

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Source:
    """One place a model's weights can come from; `sha256` None means "not verified"."""

    kind: str  # "bundled" | "hf" | "url"
    sha256: Optional[str] = None
    file: Optional[str] = None  # bundled: relative to the bundled folder
    repo_id: Optional[str] = None  # hf
    filename: Optional[str] = None  # hf
    revision: Optional[str] = None  # hf: branch, tag or commit (pin a commit)
    url: Optional[str] = None  # url

    def describe(self) -> str:
        if self.kind == "bundled":
            return f"bundled file {self.file}"
        if self.kind == "hf":
            rev = self.revision or "main"
            rev = rev[:12] if re.fullmatch(r"[0-9a-f]{40}", rev) else rev
            return f"hf {self.repo_id}/{self.filename}@{rev}"
        return f"url {self.url}"


@dataclass(frozen=True)
class ModelEntry:
    """One `[models."NAME"]` table of weights.toml."""

    name: str
    arch: str
    scale: int
    config: Dict[str, Any]
    params: Optional[int]
    license: str
    description: str
    provenance: str
    metrics: Dict[str, Any]
    sources: Tuple[Source, ...]

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["sources"] = [{k: v for k, v in asdict(s).items() if v is not None} for s in self.sources]
        return d


# ----------------------------------------------------------------------------- parsing


def _check(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {msg}")


def _parse_source(raw: Any, where: str) -> Source:
    _check(isinstance(raw, dict), where, "each source must be a table, e.g. {kind = \"hf\", ...}")
    kind = raw.get("kind")
    _check(kind in SOURCE_KINDS, where, f"kind must be one of {', '.join(SOURCE_KINDS)} (got {kind!r})")
    required = _SOURCE_KEYS[kind]
    allowed = required | {"kind", "sha256"}
    unknown = sorted(set(raw) - allowed)
    _check(not unknown, where, f"unknown key(s) {unknown} for a {kind} source; allowed: {sorted(allowed)}")
    missing = sorted(required - set(raw))
    _check(not missing, where, f"a {kind} source needs {missing}")
    for key in required:
        _check(isinstance(raw[key], str) and raw[key].strip() != "", where, f"{key} must be a non-empty string")
    sha = raw.get("sha256")
    if sha is not None:
        _check(isinstance(sha, str) and _SHA256.fullmatch(sha.lower()) is not None, where,
               "sha256 must be 64 hexadecimal digits")
        sha = sha.lower()
    if kind == "bundled":
        rel = Path(raw["file"])
        _check(not rel.is_absolute() and ".." not in rel.parts, where,
               "a bundled file is a path inside the bundled folder (no absolute path, no '..')")
    if kind == "url":
        scheme = urllib.parse.urlsplit(raw["url"]).scheme
        _check(scheme in ("http", "https"), where, f"url must be http(s) (got {raw['url']!r})")
    return Source(kind=kind, sha256=sha, **{k: raw[k] for k in required})


def _parse_entry(name: str, raw: Any, origin: str) -> ModelEntry:
    where = f'{origin}: models."{name}"'
    _check(isinstance(raw, dict), where, "must be a table")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    _check(not unknown, where, f"unknown key(s) {unknown}; allowed: {sorted(_ENTRY_KEYS)}")
    for key in ("arch", "scale", "sources"):
        _check(key in raw, where, f"missing {key!r}")
    arch, scale = raw["arch"], raw["scale"]
    _check(isinstance(arch, str) and arch != "", where, "arch must be an architecture name, e.g. \"swinir\"")
    _check(isinstance(scale, int) and not isinstance(scale, bool) and scale in (2, 3, 4), where,
           f"scale must be 2, 3 or 4 (got {scale!r})")
    params = raw.get("params")
    _check(params is None or (isinstance(params, int) and not isinstance(params, bool) and params > 0), where,
           "params must be a positive integer")
    for key in ("license", "description", "provenance"):
        _check(isinstance(raw.get(key, ""), str), where, f"{key} must be a string")
    for key in ("config", "metrics"):
        _check(isinstance(raw.get(key, {}), dict), where, f"{key} must be a table")
    sources = raw["sources"]
    _check(isinstance(sources, list) and len(sources) > 0, where, "sources must be a non-empty array of tables")
    return ModelEntry(
        name=name,
        arch=arch,
        scale=scale,
        config=dict(raw.get("config", {})),
        params=params,
        license=raw.get("license", ""),
        description=raw.get("description", ""),
        provenance=raw.get("provenance", "").strip(),
        metrics=dict(raw.get("metrics", {})),
        sources=tuple(_parse_source(s, f"{where}.sources[{i}]") for i, s in enumerate(sources)),
    )


# ----------------------------------------------------------------------------- helpers


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
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


def _url_cache_path(src: Source) -> Path:
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


def _cached_path(src: Source) -> Optional[Path]:
    if src.kind == "hf":
        return _hf_cached(src)
    if src.kind == "url":
        p = _url_cache_path(src)
        return p if p.is_file() else None
    return None


def _delete_cached(path: Path) -> None:
    # A Hugging Face snapshot entry is a symlink to a blob: remove both, or the next run
    # would find the bad blob again.
    target = Path(os.path.realpath(path))
    for p in (path, target):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _err_console():
    from rich.console import Console

    return Console(stderr=True)


def _warn_unverified(entry: ModelEntry, src: Source) -> None:
    key = (entry.name, src.describe())
    if key in _warned_unverified:
        return
    _warned_unverified.add(key)
    _err_console().print(
        f"[yellow]warning:[/] model {entry.name}: {src.describe()} has no sha256 in weights.toml, "
        "so the file is not verified",
        highlight=False,
        soft_wrap=True,
    )


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or Path(text).suffix.lower() in _WEIGHT_SUFFIXES


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# ----------------------------------------------------------------------------- progress


class _RichBar:
    """A tqdm-shaped download bar drawn with rich on stderr.

    Given to `hf_hub_download` as `tqdm_class` (it calls update/update_transfer, sets total,
    refresh, close) and used directly for plain-URL downloads.
    """

    enabled = True

    def __init__(self, *args: Any, total: Optional[float] = None, initial: float = 0, desc: Optional[str] = None,
                 disable: Optional[bool] = False, **_ignored: Any) -> None:
        self.n = initial
        self._total = total
        self._progress = None
        console = _err_console()
        # Only on a terminal: in logs and pipes a live bar is noise.
        if self.enabled and not disable and console.is_terminal:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                TimeRemainingColumn(), console=console, transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(desc or "download", total=total, completed=initial)

    @property
    def total(self) -> Optional[float]:
        return self._total

    @total.setter
    def total(self, value: Optional[float]) -> None:
        self._total = value
        if self._progress is not None:
            self._progress.update(self._task, total=value)

    def update(self, n: float = 1) -> None:
        self.n += n
        if self._progress is not None:
            self._progress.update(self._task, completed=self.n)

    def update_transfer(self, n: float = 1) -> None:
        """Network bytes (Xet downloads count them apart from file bytes): the bar shows file bytes."""

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    set_transfer_postfix_str = set_postfix_str

    def refresh(self) -> None:
        if self._progress is not None:
            self._progress.refresh()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> "_RichBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _SilentBar(_RichBar):
    enabled = False


# ----------------------------------------------------------------------------- downloads


class _SourceFailed(Exception):
    """A source that could not deliver; the message says why, in a few words."""


class _Transient(Exception):
    """A failure worth another try: connection reset, timeout, 5xx, a body cut short."""


def _retrying(fetch) -> Path:
    last: Optional[Exception] = None
    for attempt in range(DOWNLOAD_TRIES):
        if attempt:
            time.sleep(_BACKOFF_S * 2 ** (attempt - 1))
        try:
            return fetch()
        except _Transient as e:
            last = e
    raise _SourceFailed(f"{last} (gave up after {DOWNLOAD_TRIES} tries)")


def _http_status_failure(code: int, what: str) -> Exception:
    if code in (401, 403):
        return _SourceFailed(f"access denied (HTTP {code}): {what} is private or needs a login")
    if code in (404, 410):
        return _SourceFailed(f"not found (HTTP {code})")
    if code in (408, 429) or code >= 500:
        return _Transient(f"server error (HTTP {code})")
    return _SourceFailed(f"HTTP error {code}")


def _fetch_url_once(src: Source, dest: Path, label: str, bar_cls: type) -> Path:
    req = urllib.request.Request(src.url, headers={"User-Agent": f"srkd/{__version__}"})
    try:
        resp = urllib.request.urlopen(req, timeout=_URL_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()
        raise _http_status_failure(e.code, "the file")
    except ValueError as e:  # e.g. no host in the URL
        raise _SourceFailed(f"invalid URL ({_first_line(e)})")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise _Transient(f"cannot connect ({_first_line(reason) if isinstance(reason, BaseException) else reason})")
    with resp:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        except OSError as e:
            raise _SourceFailed(f"cannot write to the cache folder {dest.parent} ({e.strerror or e})")
        tmp = Path(tmp_name)
        received = 0
        try:
            with os.fdopen(fd, "wb") as out, bar_cls(total=total, desc=label) as bar:
                while True:
                    try:
                        chunk = resp.read(_CHUNK)
                    except http.client.IncompleteRead as e:
                        received += len(e.partial)
                        chunk = b""
                    except (OSError, http.client.HTTPException) as e:
                        raise _Transient(f"connection lost after {received} bytes ({_first_line(e)})")
                    if not chunk:
                        break
                    try:
                        out.write(chunk)
                    except OSError as e:
                        raise _SourceFailed(f"cannot write to the cache folder {dest.parent} ({e.strerror or e})")
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise _Transient(f"download cut off after {received} of {total} bytes")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return dest


def _download_url(src: Source, label: str, bar_cls: type) -> Path:
    dest = _url_cache_path(src)
    return _retrying(lambda: _fetch_url_once(src, dest, label, bar_cls))


def _hf_errors():
    try:
        from huggingface_hub import errors
    except ImportError:  # huggingface_hub < 0.24 kept them in utils
        from huggingface_hub import utils as errors
    return errors


def _hf_failure(src: Source, exc: Exception) -> Optional[Exception]:
    """Map a huggingface_hub exception to _SourceFailed (final), _Transient (retry) or None (a bug)."""
    E = _hf_errors()
    repo, file, rev = src.repo_id, src.filename, src.revision or "main"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, E.LocalEntryNotFoundError):  # must precede EntryNotFoundError: it subclasses it
        return _Transient(f"the Hub could not be reached and {repo}/{file} is not cached")
    if isinstance(exc, E.GatedRepoError):  # must precede RepositoryNotFoundError: it subclasses it
        return _SourceFailed(f"repository {repo} is gated: accept its terms on the Hub, then log in (`hf auth login`)")
    if isinstance(exc, E.RepositoryNotFoundError):
        code = f"HTTP {status}: " if status else ""
        return _SourceFailed(f"repository {repo} not found or private ({code}log in with `hf auth login` or set HF_TOKEN "
                             "if you have access)")
    if isinstance(exc, E.RevisionNotFoundError):
        return _SourceFailed(f"revision {rev} not found in repository {repo}")
    if isinstance(exc, E.EntryNotFoundError):
        return _SourceFailed(f"file {file} not found in repository {repo} at revision {rev}")
    if isinstance(exc, E.HfHubHTTPError) and status is not None:
        return _http_status_failure(status, f"repository {repo}")
    if isinstance(exc, ValueError):  # invalid repo id or revision: retrying cannot help
        return _SourceFailed(f"invalid source ({_first_line(exc)})")
    # Network trouble the client gave up on (its own retries included): worth another try.
    if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests",
                                                                          "urllib3"):
        return _Transient(f"{type(exc).__name__}: {_first_line(exc)}")
    return None  # anything else is a bug: let it propagate unchanged


def _download_hf(src: Source, bar_cls: type, *, local_only: bool) -> Path:
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
            failure = _hf_failure(src, e)
            if failure is None:
                raise
            raise failure from e

    if local_only:
        try:
            return fetch()
        except _Transient as e:
            raise _SourceFailed(str(e))
    return _retrying(fetch)


# ----------------------------------------------------------------------------- the zoo


class Zoo:
    """The models of one weights.toml, and where their files come from."""

    def __init__(self, entries: Dict[str, ModelEntry], *, bundled_dir: PathLike = DEFAULT_BUNDLED_DIR,
                 origin: str = "weights.toml") -> None:
        self.entries: Dict[str, ModelEntry] = dict(entries)
        self.bundled_dir = Path(bundled_dir)
        self.origin = origin

    @classmethod
    def from_file(cls, path: PathLike, *, bundled_dir: Optional[PathLike] = None) -> "Zoo":
        """Read a weights.toml; bundled files are looked up in `bundled_dir` (default: `weights/` beside it)."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read it ({e})") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        unknown = sorted(set(data) - {"models"})
        _check(not unknown, str(path), f"unknown top-level key(s) {unknown}; models go in [models.\"NAME\"] tables")
        models = data.get("models", {})
        _check(isinstance(models, dict), str(path), "`models` must be a table of tables")
        entries = {name: _parse_entry(name, raw, str(path)) for name, raw in models.items()}
        bundled = Path(bundled_dir) if bundled_dir is not None else path.parent / "weights"
        return cls(entries, bundled_dir=bundled, origin=str(path))

    def list(self) -> List[ModelEntry]:
        """All entries, in file order."""
        return [*self.entries.values()]

    def names(self) -> List[str]:
        return [*self.entries]

    def _lookup(self, name: str, scale: Optional[int]) -> Optional[ModelEntry]:
        candidates = [name] + ([f"{name}-x{scale}"] if scale is not None else [])
        for cand in candidates:
            if cand in self.entries:
                entry = self.entries[cand]
            else:
                entry = next((e for n, e in self.entries.items() if n.lower() == cand.lower()), None)
            if entry is not None:
                if scale is not None and entry.scale != scale:
                    raise ModelNotFoundError(f"model {entry.name} is x{entry.scale}, not x{scale}")
                return entry
        return None

    def get(self, name: str, *, scale: Optional[int] = None) -> ModelEntry:
        """The entry called `name`; with `scale`, `name` may be a family (`swinir4` -> `swinir4-x2`)."""
        entry = self._lookup(name, scale)
        if entry is not None:
            return entry
        wanted = f"{name}-x{scale}" if scale is not None else name
        close = difflib.get_close_matches(wanted, self.names(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelNotFoundError(f"unknown model {wanted!r}{hint} (`srkd models` lists them)")

    def where(self, name: str) -> str:
        """Where `resolve` would find the weights now: "bundled", "cached", "remote" or "missing"."""
        entry = self.get(name)
        if any(s.kind == "bundled" and (self.bundled_dir / s.file).is_file() for s in entry.sources):
            return "bundled"
        remote = [s for s in entry.sources if s.kind != "bundled"]
        if any(_cached_path(s) is not None for s in remote):
            return "cached"
        return "remote" if remote else "missing"

    def resolve(self, name_or_path: PathLike, *, scale: Optional[int] = None, offline: Optional[bool] = None,
                progress: bool = True) -> Path:
        """A local weights file for a model name (or an existing path, returned as is).

        `offline=None` follows HF_HUB_OFFLINE; offline, nothing is downloaded.
        """
        text = os.fspath(name_or_path)
        path = Path(text).expanduser()
        if path.is_file():
            return path
        entry = self._lookup(text, scale)
        if entry is None:
            if path.is_dir():
                raise CheckpointError(f"{path}: is a folder, not a weights file")
            if _looks_like_path(text):
                raise ModelNotFoundError(f"{text}: no such file (and no model of that name in the zoo)")
            entry = self.get(text, scale=scale)
        return self._resolve_entry(entry, offline=offline_from_env() if offline is None else offline,
                                   progress=progress)

    def _verify(self, entry: ModelEntry, src: Source, path: Path) -> Path:
        if src.sha256 is None:
            _warn_unverified(entry, src)
            return path
        got = sha256_file(path)
        if got == src.sha256:
            return path
        if src.kind == "bundled":  # never delete from the installation itself
            raise CheckpointError(
                f"model {entry.name}: bundled file {path} fails its checksum (sha256 expected {src.sha256}, "
                f"got {got}): the installation is damaged, reinstall srkd")
        _delete_cached(path)
        raise CheckpointError(
            f"model {entry.name}: the file from {src.describe()} fails its checksum (sha256 expected {src.sha256}, "
            f"got {got}); it was deleted from the cache")

    def _resolve_entry(self, entry: ModelEntry, *, offline: bool, progress: bool) -> Path:
        tried: List[str] = []
        for src in entry.sources:
            if src.kind == "bundled":
                p = self.bundled_dir / src.file
                if p.is_file():
                    return self._verify(entry, src, p)
                tried.append(f"{src.describe()}: not installed in {self.bundled_dir}")
        remote = [s for s in entry.sources if s.kind != "bundled"]
        for src in remote:
            p = _cached_path(src)
            if p is not None:
                return self._verify(entry, src, p)

        bar_cls = _RichBar if progress else _SilentBar
        if offline:
            # Ask huggingface_hub too, without network: its cache layout is its own business.
            for src in remote:
                if src.kind == "hf":
                    try:
                        return self._verify(entry, src, _download_hf(src, bar_cls, local_only=True))
                    except _SourceFailed:
                        pass
            if remote:
                why = "HF_HUB_OFFLINE=1 is set" if offline_from_env() else "offline mode is on"
                raise ModelNotFoundError(f"model {entry.name} is not cached and {why}")
        else:
            for src in remote:
                try:
                    if src.kind == "hf":
                        p = _download_hf(src, bar_cls, local_only=False)
                    else:
                        p = _download_url(src, entry.name, bar_cls)
                except _SourceFailed as e:
                    tried.append(f"{src.describe()}: {e}")
                    continue
                return self._verify(entry, src, p)
        if len(tried) == 1:
            raise ModelNotFoundError(f"model {entry.name}: {tried[0]}")
        listed = "; ".join(f"({i}) {t}" for i, t in enumerate(tried, 1))
        raise ModelNotFoundError(f"model {entry.name}: no source worked: {listed}")


@lru_cache(maxsize=1)
def get_zoo() -> Zoo:
    """The zoo shipped with srkd (srkd_cli/weights.toml and srkd_cli/weights/)."""
    return Zoo.from_file(DEFAULT_TOML, bundled_dir=DEFAULT_BUNDLED_DIR)


def resolve(name_or_path: PathLike, **kwargs: Any) -> Path:
    """`get_zoo().resolve(...)`: a local weights file for a model name or path."""
    return get_zoo().resolve(name_or_path, **kwargs)


__all__ = ["ModelEntry", "Source", "Zoo", "get_zoo", "resolve", "sha256_file", "url_cache_dir", "offline_from_env"]
