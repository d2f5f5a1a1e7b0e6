"""What one GPU session of `research/gpu/gpu_run.py` hands the next: the resume pack and the model packs.

A device call returns at most 8 files (16 MiB each, 64 MiB together), and the next session can
carry in only what fits in 64 MiB beside the code and the training data. So a run's `--out` holds:

- `resume.zip`: what a later invocation on a fresh machine needs and nothing else:
  `summary.json`, `gpu_run.log`, under `weights/` the weights of finished stages that stages
  still to run read (a teacher, a start), and under `runs/NAME/` the `state.pt` and `log.jsonl`
  of every stage begun and not finished. Both travel **compacted** (`LEVELS`), as little as the
  pack's size limit allows: level 0 keeps everything, weights in float16 and Adam's moments in
  bfloat16 (bfloat16: squared gradients underflow float16), half the bytes of float32; level 1
  also leaves out Adam's first moment, which restarts from zero and re-forms within ~10 steps
  (beta1 = 0.9); level 2 also leaves out the raw weights, which restart from the EMA weights.
  A resume from the pack is therefore close to, not bit-for-bit, the uninterrupted run; a resume
  on the same machine (`--resume` with the same `--work`) reads the full float32 state and is exact.
- `models-{invocation}.zip` (more parts `models-{invocation}-2.zip`, ... when one would pass
  `MAX_PART`): the float32 weights of the stages finished by that invocation, so copying every
  session's files into one folder loses nothing.

Also the file helpers the harness shares: atomic JSON writes and copies, reading a trainer's log.jsonl.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from srkd_cli.atomic import atomic_write
from srkd_cli.errors import ConfigError

RESUME_PACK = "resume.zip"
MAX_PART = 15 * 2**20  # under the device tool's 16 MiB per returned file
WEIGHTS_DIR = "weights"
RUNS_DIR = "runs"
_STATE_WEIGHTS = ("model", "ema", "adapters")
_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_HALF_MAX = 60000.0  # float16 tops out at 65504; a tensor beyond stays float32


def _half(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if not (t.is_floating_point() and t.dtype == torch.float32 and t.dim() > 0):
        return t
    if dtype == torch.float16 and (not torch.isfinite(t).all() or t.abs().max() > _HALF_MAX):
        return t
    return t.to(dtype)


# What each compaction level leaves out (restored by `expand_state`).
LEVELS = ((), ("exp_avg",), ("exp_avg", "model"))


def compact_state(state: Mapping[str, Any], level: int = 0) -> Dict[str, Any]:
    """A trainer `state.pt` in half the bytes or less: float16 weights (model, EMA, adapters), bfloat16
    Adam moments, less what `LEVELS[level]` leaves out (the raw weights only where an EMA can stand in)."""
    drop = set(LEVELS[level])
    if state.get("ema") is None:
        drop.discard("model")
    out = dict(state)
    for key in _STATE_WEIGHTS:
        if isinstance(state.get(key), Mapping):
            out[key] = {k: _half(v, torch.float16) for k, v in state[key].items()}
    if "model" in drop:
        del out["model"]
    opt = state.get("optimizer")
    if isinstance(opt, Mapping) and isinstance(opt.get("state"), Mapping):
        out["optimizer"] = {**opt, "state": {
            i: {k: _half(v, torch.bfloat16) if k in _MOMENTS and torch.is_tensor(v) else v
                for k, v in s.items() if k not in drop}
            for i, s in opt["state"].items()}}
    out["compacted"] = {"weights": "float16", "moments": "bfloat16", "level": level, "left_out": sorted(drop)}
    return out


def expand_state(state: Mapping[str, Any]) -> Dict[str, Any]:
    """A state the trainer resumes from: every half-precision tensor back in float32, what the
    compaction left out restarted (the raw weights from the EMA, Adam's first moment from zero)."""

    def full(v: Any) -> Any:
        return v.float() if torch.is_tensor(v) and v.dtype in (torch.float16, torch.bfloat16) else v

    out = dict(state)
    for key in _STATE_WEIGHTS:
        if isinstance(state.get(key), Mapping):
            out[key] = {k: full(v) for k, v in state[key].items()}
    if "model" not in out and isinstance(out.get("ema"), Mapping):
        out["model"] = {k: v.clone() for k, v in out["ema"].items()}
    opt = state.get("optimizer")
    if isinstance(opt, Mapping) and isinstance(opt.get("state"), Mapping):
        states = {}
        for i, s in opt["state"].items():
            s = {k: full(v) for k, v in s.items()}
            if "exp_avg" not in s and "exp_avg_sq" in s:
                s["exp_avg"] = torch.zeros_like(s["exp_avg_sq"])
            states[i] = s
        out["optimizer"] = {**opt, "state": states}
    return out


def half_weights(path: Path) -> bytes:
    """A safetensors file with its floating tensors in float16 and its metadata (provenance) kept."""
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: _half(f.get_tensor(k), torch.float16).contiguous() for k in f.keys()}
    return save(tensors, metadata=meta)


def state_bytes(path: Path, level: int = 0) -> bytes:
    """A run's `state.pt`, compacted to `level`, as the bytes the pack stores."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    buf = io.BytesIO()
    torch.save(compact_state(state, level), buf)
    return buf.getvalue()


Member = Union[bytes, Path]


def write_zip(path: Path, members: Mapping[str, Member], stored: bool = False) -> int:
    """Write (atomically) a zip of `members` (name -> bytes or file), deflated unless `stored`; returns its size.

    float32 weights gain ~7 % from deflate and cost a second per 15 MB, so model packs are stored;
    the resume pack's half-precision tensors and logs are deflated (every MB counts in the carry)."""

    def write(tmp: Path) -> None:
        mode = dict(compression=zipfile.ZIP_STORED) if stored else dict(compression=zipfile.ZIP_DEFLATED, compresslevel=6)
        with zipfile.ZipFile(tmp, "w", **mode) as z:
            for name, data in members.items():
                if isinstance(data, Path):
                    z.write(data, name)
                else:
                    z.writestr(name, data)

    atomic_write(path, write)
    return path.stat().st_size


def _safe_member(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ConfigError(f"{name}: not a member name a gpu_run pack holds")
    return p


def read_pack_summary(pack: Path) -> Dict[str, Any]:
    """The `summary.json` inside a resume pack."""
    try:
        with zipfile.ZipFile(pack) as z:
            return json.loads(z.read("summary.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ConfigError(f"{pack}: not a readable gpu_run resume pack ({type(e).__name__}: {e})") from None


def unpack(pack: Path, work: Path) -> List[str]:
    """Lay a resume pack out in `work` as the run left it: weights beside the run folders,
    each `state.pt` back in float32. Returns the stage names whose state it restored."""
    restored = []
    try:
        with zipfile.ZipFile(pack) as z:
            for info in z.infolist():
                p = _safe_member(info.filename)
                data = z.read(info)
                if p.parts[0] == WEIGHTS_DIR and len(p.parts) == 2:
                    dest = work / WEIGHTS_DIR / p.name  # where gpu_run keeps the float16 copies stages read
                elif p.parts[0] == RUNS_DIR and len(p.parts) == 3:
                    dest = work / p.parts[1] / p.name
                    if p.name == "state.pt":
                        state = expand_state(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
                        buf = io.BytesIO()
                        torch.save(state, buf)
                        data = buf.getvalue()
                        restored.append(p.parts[1])
                elif len(p.parts) == 1:
                    dest = work / p.name
                else:
                    raise ConfigError(f"{info.filename}: not a member name a gpu_run pack holds")
                atomic_write(dest, lambda tmp, d=data: tmp.write_bytes(d))
    except (OSError, zipfile.BadZipFile) as e:
        raise ConfigError(f"{pack}: not a readable gpu_run resume pack ({type(e).__name__}: {e})") from None
    return restored


def part_name(invocation: int, part: int) -> str:
    return f"models-{invocation}.zip" if part == 1 else f"models-{invocation}-{part}.zip"


def _invocation(zip_path: Path) -> Tuple[int, int]:
    """models-3.zip -> (3, 1), models-3-2.zip -> (3, 2); anything else sorts first."""
    parts = zip_path.stem.split("-")[1:]
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 1
    except (ValueError, IndexError):
        return 0, 0


def find_weights(folder: Path, name: str, returned_in: Optional[str] = None) -> Optional[Tuple[Path, Optional[str]]]:
    """Where a stage's weights lie among what came back: (file, None) or (zip, member).

    `returned_in` (the stage record's) first: a stage paused in one invocation and finished in a
    later one came back twice, and the later pack holds its final weights; else the newest pack.
    """
    member = f"{name}.safetensors"
    zips = sorted(folder.glob("models-*.zip"), key=_invocation, reverse=True)
    if returned_in:
        zips = [folder / returned_in] + [z for z in zips if z.name != returned_in]
    for z in zips:
        try:
            with zipfile.ZipFile(z) as f:
                if member in f.namelist():
                    return z, member
        except (OSError, zipfile.BadZipFile):
            continue
    for cand in (folder / member, folder / "models" / member):
        if cand.is_file():
            return cand, None
    return None


# ---------------------------------------------------------------------------------------------- files


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n"))


def copy_atomic(src: Path, dest: Path) -> None:
    atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))


def read_log(path: Path) -> List[Dict[str, Any]]:
    """A trainer's log.jsonl as records."""
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a torn last line
    return out


def thin(records: List[Dict[str, Any]], keep: int = 60) -> List[Dict[str, Any]]:
    """At most `keep` training records (evenly spaced, the last kept) plus every validation."""
    train = [r for r in records if r.get("event") == "train"]
    step = max(1, -(-len(train) // keep))
    kept = train[::step]
    if train and kept[-1] is not train[-1]:
        kept.append(train[-1])
    return sorted(kept + [r for r in records if r.get("event") != "train"], key=lambda r: r.get("step", 0))
