"""Weights named by a Hugging Face Hub id: `hf://OWNER/REPO/PATH/FILE[@REVISION][#sha256=HEX]`.

Any model srkd can load may be named this way (`srkd distill --teacher hf://...`, `srkd upscale
--model hf://...`), with no entry in weights.toml. The file must be pinned, so that the weights
cannot change under a run: REVISION a full 40-digit commit, or a sha256 of the file (or both).
It is fetched through huggingface_hub (its cache, HF_ENDPOINT, HF_HUB_OFFLINE, tokens), and a
file failing its sha256 is deleted from the cache.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Tuple

from ..errors import CheckpointError, ConfigError, ModelNotFoundError
from .cache import cached_path, delete_cached, offline_from_env, sha256_file
from .download import download_hf
from .failures import SourceFailed
from .progress import RichBar, SilentBar
from .schema import Source

PREFIX = "hf://"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_FORM = "hf://OWNER/REPO/FILE@COMMIT or hf://OWNER/REPO/FILE#sha256=HEX"


def is_hub_id(text: object) -> bool:
    return isinstance(text, str) and text.startswith(PREFIX)


def parse_hub_id(text: str) -> Source:
    """The hf Source a Hub id names; a ConfigError (one line) when it is malformed or not pinned."""
    rest, sha = text[len(PREFIX):], None
    if "#" in rest:
        rest, frag = rest.split("#", 1)
        if not frag.startswith("sha256=") or not _SHA256.fullmatch(frag[len("sha256="):]):
            raise ConfigError(f"{text}: after '#' give sha256= and the file's 64 hexadecimal digits")
        sha = frag[len("sha256="):].lower()
    revision: Optional[str] = None
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
        if not revision:
            raise ConfigError(f"{text}: nothing after '@' (give a commit)")
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts) or any(p in (".", "..") for p in parts):
        raise ConfigError(f"{text}: a Hub id is {_FORM}")
    if sha is None and (revision is None or not _COMMIT.fullmatch(revision)):
        pinned = f"@{revision} is a branch or tag, which can move" if revision else "no commit or sha256 is given"
        raise ConfigError(f"{text}: pin the file ({pinned}): {_FORM}")
    return Source(kind="hf", sha256=sha, repo_id="/".join(parts[:2]), filename="/".join(parts[2:]),
                  revision=revision or "main")


def resolve_hub_id(text: str, *, offline: Optional[bool] = None, progress: bool = True) -> Path:
    """A local, verified copy of the file a Hub id names (cached, else downloaded unless offline)."""
    return fetch_hub_id(text, offline=offline, progress=progress)[0]


def fetch_hub_id(text: str, *, offline: Optional[bool] = None, progress: bool = True) -> Tuple[Path, Optional[str]]:
    """`resolve_hub_id`, with the file's sha256 when the id pins one (it was hashed to check it), else None."""
    src = parse_hub_id(text)
    offline = offline_from_env() if offline is None else offline
    path = cached_path(src)
    if path is None:
        try:
            path = download_hf(src, RichBar if progress and not offline else SilentBar, local_only=offline)
        except SourceFailed as e:
            why = " (offline: HF_HUB_OFFLINE=1 or --offline)" if offline else ""
            raise ModelNotFoundError(f"{text}: {e}{why}") from None
    if src.sha256 is not None:
        got = sha256_file(path)
        if got != src.sha256:
            delete_cached(path)
            raise CheckpointError(f"{text}: the downloaded file fails its checksum (sha256 {got}); "
                                  "it was deleted from the cache")
        return path, got
    return path, None


__all__ = ["PREFIX", "fetch_hub_id", "is_hub_id", "parse_hub_id", "resolve_hub_id"]
