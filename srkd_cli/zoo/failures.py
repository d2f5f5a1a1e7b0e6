"""Why a source failed, in a few words: HTTP statuses and huggingface_hub exceptions mapped to
`SourceFailed` (final: try the next source) or `Transient` (worth another try)."""

from __future__ import annotations

from typing import Optional

from .schema import Source


class SourceFailed(Exception):
    """A source that could not deliver; the message says why, in a few words."""


class Transient(Exception):
    """A failure worth another try: connection reset, timeout, 5xx, a body cut short."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def http_status_failure(code: int, what: str) -> Exception:
    if code in (401, 403):
        return SourceFailed(f"access denied (HTTP {code}): {what} is private or needs a login")
    if code in (404, 410):
        return SourceFailed(f"not found (HTTP {code})")
    if code in (408, 429) or code >= 500:
        return Transient(f"server error (HTTP {code})")
    return SourceFailed(f"HTTP error {code}")


def _hf_errors():
    try:
        from huggingface_hub import errors
    except ImportError:  # huggingface_hub < 0.24 kept them in utils
        from huggingface_hub import utils as errors
    return errors


def hf_failure(src: Source, exc: Exception) -> Optional[Exception]:
    """Map a huggingface_hub exception to SourceFailed (final), Transient (retry) or None (a bug)."""
    E = _hf_errors()
    repo, file, rev = src.repo_id, src.filename, src.revision or "main"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, E.LocalEntryNotFoundError):  # must precede EntryNotFoundError: it subclasses it
        return Transient(f"the Hub could not be reached and {repo}/{file} is not cached")
    if isinstance(exc, E.GatedRepoError):  # must precede RepositoryNotFoundError: it subclasses it
        return SourceFailed(f"repository {repo} is gated: accept its terms on the Hub, then log in (`hf auth login`)")
    if isinstance(exc, E.RepositoryNotFoundError):
        code = f"HTTP {status}: " if status else ""
        return SourceFailed(f"repository {repo} not found or private ({code}log in with `hf auth login` or set HF_TOKEN "
                            "if you have access)")
    if isinstance(exc, E.RevisionNotFoundError):
        return SourceFailed(f"revision {rev} not found in repository {repo}")
    if isinstance(exc, E.EntryNotFoundError):
        return SourceFailed(f"file {file} not found in repository {repo} at revision {rev}")
    if isinstance(exc, E.HfHubHTTPError) and status is not None:
        return http_status_failure(status, f"repository {repo}")
    if isinstance(exc, ValueError):  # invalid repo id or revision: retrying cannot help
        return SourceFailed(f"invalid source ({first_line(exc)})")
    # Network trouble the client gave up on (its own retries included): worth another try.
    if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests",
                                                                          "urllib3"):
        return Transient(f"{type(exc).__name__}: {first_line(exc)}")
    return None  # anything else is a bug: let it propagate unchanged
