"""The model zoo: `weights.toml` entries, and turning a model name into a local weights file.

`Zoo.identify(text)` is the one place that decides what a user's model argument names: an
existing file, a pinned Hub id (`hf://`), or a zoo entry; anything else is a one-line error.
`Zoo.resolve(name)` looks, in this order, at: an existing file of that name; a file bundled
in the package; the local caches (the Hugging Face cache for `hf` sources, srkd's URL cache
for `url` sources); then downloads, source by source in the entry's order. A file with a
known sha256 is verified before it is returned; a cached or downloaded file that fails is
deleted. The schema of `weights.toml` is documented in docs/zoo.md.

The package: `schema` (entries and their parsing), `cache` (cache folders, hashes),
`download` (URL and Hub downloads, retries), `failures` (HTTP and Hub errors in a few words),
`progress` (the download bar); the `Zoo` itself is here. Nothing in it imports torch:
`srkd models` stays fast.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import CheckpointError, ModelNotFoundError
from .cache import PathLike, cached_path, delete_cached, offline_from_env, sha256_file, url_cache_dir
from .download import download_hf, download_url
from .failures import SourceFailed
from .hubid import fetch_hub_id, is_hub_id
from .progress import RichBar, SilentBar, err_console
from .schema import ModelEntry, Source, read_entries

PACKAGE_DIR = Path(__file__).parents[1]
# One weights.toml, at the repository's top level: an installed wheel carries a copy inside the
# package (setup.py), a source checkout or an editable install reads the top-level file.
DEFAULT_TOML = next((p for p in (PACKAGE_DIR / "weights.toml", PACKAGE_DIR.parent / "weights.toml") if p.is_file()),
                    PACKAGE_DIR / "weights.toml")
DEFAULT_BUNDLED_DIR = PACKAGE_DIR / "weights"

_WEIGHT_SUFFIXES = {".safetensors", ".pth", ".pt", ".bin", ".ckpt"}
_warned_unverified: set = set()


def _warn_unverified(entry: ModelEntry, src: Source) -> None:
    key = (entry.name, src.describe())
    if key in _warned_unverified:
        return
    _warned_unverified.add(key)
    err_console().print(
        f"[yellow]warning:[/] model {entry.name}: {src.describe()} has no sha256 in weights.toml, "
        "so the file is not verified",
        highlight=False,
        soft_wrap=True,
    )


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or Path(text).suffix.lower() in _WEIGHT_SUFFIXES


@dataclass(frozen=True)
class ModelRef:
    """What a model argument names, as `Zoo.identify` decided: exactly one of `path`, `hub_id`, `entry`."""

    text: str  # as the user gave it
    path: Optional[Path] = None  # an existing file (user's ~ expanded)
    hub_id: Optional[str] = None  # hf://OWNER/REPO/FILE@COMMIT|#sha256=HEX (zoo/hubid.py)
    entry: Optional[ModelEntry] = None


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
        entries = read_entries(path)
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
        raise self._unknown(name, scale)

    def _unknown(self, name: str, scale: Optional[int]) -> ModelNotFoundError:
        """'unknown model NAME', with the close names (at `scale` first)."""
        # The name as typed: `{name}-x{scale}` was only a guess at a family, and echoing it
        # turned `edsr-t-x2 --scale 2` into 'edsr-t-x2-x2'. Names at `scale` are suggested first.
        lowered = {n.lower(): n for n in self.names()}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)]
        if scale is not None:
            close.sort(key=lambda n: self.entries[n].scale != scale)  # stable: closeness within each group
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        if not close and name.lower().startswith("realesr"):
            hint = "; Real-ESRGAN's models are not in srkd's zoo, but their .pth files run with --weights FILE"
        return ModelNotFoundError(f"unknown model {name!r}{hint} (`srkd models` lists them)")

    def where(self, name: str) -> str:
        """Where `resolve` would find the weights now: "bundled", "cached", "remote" or "missing"."""
        entry = self.get(name)
        if any(s.kind == "bundled" and (self.bundled_dir / s.file).is_file() for s in entry.sources):
            return "bundled"
        remote = [s for s in entry.sources if s.kind != "bundled"]
        if any(cached_path(s) is not None for s in remote):
            return "cached"
        return "remote" if remote else "missing"

    def identify(self, name_or_path: PathLike, *, scale: Optional[int] = None,
                 strict: bool = True) -> Optional[ModelRef]:
        """What `name_or_path` names, in this order: an existing file, a Hub id, a zoo entry.

        Nothing is read or downloaded. With `scale`, a family name finds its member at that
        scale, and an entry at another scale is an error. Anything else is a one-line error
        (a folder, a path-like string with no file, an unknown name with close names), or
        None when not `strict` (the caller has other readings, e.g. bench's architectures).
        """
        text = os.fspath(name_or_path)
        path = Path(text).expanduser()
        if path.is_file():
            return ModelRef(text, path=path)
        if is_hub_id(text):
            return ModelRef(text, hub_id=text)
        entry = self._lookup(text, scale)
        if entry is not None:
            return ModelRef(text, entry=entry)
        if not strict:
            return None
        if text and path.is_dir():  # Path("") is the current folder
            raise CheckpointError(f"{path}: is a folder, not a weights file")
        if _looks_like_path(text):
            raise ModelNotFoundError(f"{text}: no such file (and no model of that name in the zoo)")
        raise self._unknown(text, scale)

    def fetch(self, ref: ModelRef, *, offline: Optional[bool] = None,
              progress: bool = True) -> Tuple[Path, Optional[str]]:
        """The local file `ref` names, and its sha256 where getting it already hashed it (else None).

        `offline=None` follows HF_HUB_OFFLINE; offline, nothing is downloaded.
        """
        if ref.path is not None:
            return ref.path, None
        if ref.hub_id is not None:
            return fetch_hub_id(ref.hub_id, offline=offline, progress=progress)
        assert ref.entry is not None
        return self._resolve_entry(ref.entry, offline=offline_from_env() if offline is None else offline,
                                   progress=progress)

    def resolve(self, name_or_path: PathLike, *, scale: Optional[int] = None, offline: Optional[bool] = None,
                progress: bool = True) -> Path:
        """A local weights file for a model name (or an existing path, returned as is).

        `offline=None` follows HF_HUB_OFFLINE; offline, nothing is downloaded.
        """
        ref = self.identify(name_or_path, scale=scale)
        assert ref is not None
        return self.fetch(ref, offline=offline, progress=progress)[0]

    def _verify(self, entry: ModelEntry, src: Source, path: Path) -> Tuple[Path, Optional[str]]:
        if src.sha256 is None:
            _warn_unverified(entry, src)
            return path, None
        got = sha256_file(path)
        if got == src.sha256:
            return path, got
        if src.kind == "bundled":  # never delete from the installation itself
            raise CheckpointError(
                f"model {entry.name}: bundled file {path} fails its checksum (sha256 expected {src.sha256}, "
                f"got {got}): the installation is damaged, reinstall srkd")
        delete_cached(path)
        raise CheckpointError(
            f"model {entry.name}: the file from {src.describe()} fails its checksum (sha256 expected {src.sha256}, "
            f"got {got}); it was deleted from the cache")

    def _resolve_entry(self, entry: ModelEntry, *, offline: bool, progress: bool) -> Tuple[Path, Optional[str]]:
        tried: List[str] = []
        for src in entry.sources:
            if src.kind == "bundled":
                p = self.bundled_dir / src.file
                if p.is_file():
                    return self._verify(entry, src, p)
                tried.append(f"{src.describe()}: not installed in {self.bundled_dir}")
        remote = [s for s in entry.sources if s.kind != "bundled"]
        for src in remote:
            p = cached_path(src)
            if p is not None:
                return self._verify(entry, src, p)

        bar_cls = RichBar if progress else SilentBar
        if offline:
            # Ask huggingface_hub too, without network: its cache layout is its own business.
            for src in remote:
                if src.kind == "hf":
                    try:
                        return self._verify(entry, src, download_hf(src, bar_cls, local_only=True))
                    except SourceFailed:
                        pass
            if remote:
                why = "HF_HUB_OFFLINE=1 is set" if offline_from_env() else "offline mode is on"
                raise ModelNotFoundError(f"model {entry.name} is not cached and {why}")
        else:
            for src in remote:
                try:
                    if src.kind == "hf":
                        p = download_hf(src, bar_cls, local_only=False)
                    else:
                        p = download_url(src, entry.name, bar_cls)
                except SourceFailed as e:
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


__all__ = ["ModelEntry", "ModelRef", "Source", "Zoo", "get_zoo", "sha256_file", "url_cache_dir", "offline_from_env"]
