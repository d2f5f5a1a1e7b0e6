"""Writing a file so that it appears whole or not at all: the one way srkd writes outputs, states,
caches and downloads (a temporary file beside the target, synced, then renamed)."""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterable, Iterator, List, Set, Tuple, Union

from .errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> Tuple[int, Path]:
    """A new temporary file beside `path`: `.NAME.PID.XXXXXXXX.tmp` (the pid tells a later run
    whether its writer still lives: `remove_stale_temps`)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    return fd, Path(name)


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Give `tmp` the usual mode (mkstemp and some writers make 0600) and rename it onto `path`."""
    os.chmod(tmp, 0o666 & ~_umask())
    if not overwrite and path.exists():
        raise FileExistsError(errno.EEXIST, "already exists", str(path))
    os.replace(tmp, path)


@contextmanager
def atomic_file(path: Union[str, Path], overwrite: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: on a clean exit it is flushed, synced to disk and
    renamed into place, so a reader (or a crash, or a power cut) never sees half a file; on any
    error or interrupt it is removed. `overwrite=False` refuses to replace an existing `path`
    (FileExistsError). The parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path, overwrite)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Union[str, Path], write: Callable[[Path], None], overwrite: bool = True) -> Path:
    """`atomic_file` for writers that want a path (torch.save, PIL, safetensors): `write(tmp)`
    fills a temporary file beside `path`, which is then synced and renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _publish(tmp, path, overwrite)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_report(option: str, path: Union[str, Path, None], overwrite: bool = False,
                 inputs: Iterable[Union[str, Path]] = (), outputs: Iterable[Union[str, Path]] = (),
                 input_folders: Iterable[Union[str, Path]] = ()) -> None:
    """Refuse a report file (`--json FILE`) that breaks the output rules, before any work: a
    folder, an input (a file in `inputs`, or any existing file under `input_folders`), an
    output of this run, or an existing file without `overwrite`. '-' (stdout) passes."""
    if path is None or str(path) == "-":
        return
    text = os.fspath(path)
    p = Path(text).expanduser()
    if p.is_dir() or text.endswith(("/", os.sep)):
        raise OutputError(f"{option} {text}: is a folder; give a file name, e.g. {p / 'report.json'}")
    key = p.resolve()
    if any(key == Path(q).expanduser().resolve() for q in inputs) or (p.is_file() and any(
            key.is_relative_to(Path(d).expanduser().resolve()) for d in input_folders)):
        raise OutputError(f"{option} {text}: is an input of this run; give another file")
    if any(key == Path(q).expanduser().resolve() for q in outputs):
        raise OutputError(f"{option} {text}: is an output of this run; give another file")
    if p.exists() and not overwrite:
        raise OutputError(f"{option} {text}: already exists (use --overwrite to replace it)")


def write_report(option: str, path: Union[str, Path], text: str, overwrite: bool = False) -> None:
    """Write a report's text atomically ('-': stdout); a file that appeared since `check_report`
    is still not replaced without `overwrite`."""
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    p = Path(path).expanduser()
    remove_stale_temps([p])
    if p.exists() and not overwrite:
        raise OutputError(f"{option} {path}: already exists (use --overwrite to replace it)")
    try:
        atomic_write(p, lambda tmp: tmp.write_text(text))
    except OSError as e:
        raise OutputError(f"{option} {path}: cannot write ({e.strerror or e})") from None


def remove_stale_temps(paths: Iterable[Union[str, Path]]) -> List[Path]:
    """Remove the temporary files srkd's writers left beside `paths` when they were killed
    (kill -9): `.NAME.PID.XXXXXXXX.tmp`, and `.NAME.PID.tmp` of older versions, whose process is
    gone. A live writer's file, and any other file, stays. Returns those removed."""
    names: Dict[Path, Set[str]] = {}
    for p in paths:
        p = Path(p)
        names.setdefault(p.parent, set()).add(p.name)
    removed = []
    for folder, wanted in names.items():
        try:
            entries = [e.name for e in os.scandir(folder) if e.name.startswith(".") and e.name.endswith(".tmp")]
        except OSError:  # no folder yet, or not readable: nothing of ours to clean there
            continue
        for entry in entries:
            parts = entry[1:-len(".tmp")].split(".")
            for cut in (1, 2):  # the pid is the last part, or the one before mkstemp's random part
                if len(parts) > cut and ".".join(parts[:-cut]) in wanted and parts[-cut].isdigit():
                    if not _alive(int(parts[-cut])):
                        try:
                            (folder / entry).unlink()
                            removed.append(folder / entry)
                        except OSError:
                            pass
                    break
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process, or not a pid: leave it
        return True
    return True
