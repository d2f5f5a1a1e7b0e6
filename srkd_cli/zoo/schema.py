"""The schema of `weights.toml` (docs/zoo.md): `Source`, `ModelEntry`, and parsing with one-line errors."""

from __future__ import annotations

import re
import sys
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..config import SCALES
from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

SOURCE_KINDS = ("bundled", "hf", "url")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ENTRY_KEYS = {"arch", "scale", "config", "params", "license", "description", "provenance", "metrics", "sources"}
_SOURCE_KEYS = {"bundled": {"file"}, "hf": {"repo_id", "filename", "revision"}, "url": {"url"}}  # required


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
    _check(isinstance(scale, int) and not isinstance(scale, bool) and scale in SCALES, where,
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


def read_entries(path: Path) -> Dict[str, ModelEntry]:
    """The entries of the weights.toml at `path`, in file order; any fault is a one-line ConfigError."""
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
    return {name: _parse_entry(name, raw, str(path)) for name, raw in models.items()}
