"""Which files an `srkd upscale` run reads, and where each output goes.

Outputs are planned before any work so that an input is never overwritten and two inputs never
write the same file; srkd's own earlier outputs and an output folder inside a walked input are
left out.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

from .errors import ConfigError, InputError
from .imaging.io import IMAGE_SUFFIXES, PNG_COMPRESSION, find_images, image_decodes, list_images

FORMAT_SUFFIX = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp", "tif": ".tif", "tiff": ".tif", "bmp": ".bmp"}
SUFFIX_FORMAT = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp", ".tif": "tif", ".tiff": "tif", ".bmp": "bmp"}
STDOUT = Path("-")  # `-o -`: the one output goes to stdout
# Formats srkd cannot write, named in the refusal of `-o out.gif` (which would otherwise be a folder).
OTHER_IMAGE_FORMATS = {".gif": "GIF", ".avif": "AVIF", ".heic": "HEIC", ".heif": "HEIF", ".jxl": "JPEG XL",
                       ".jp2": "JPEG 2000", ".j2k": "JPEG 2000", ".ico": "ICO", ".tga": "TGA", ".psd": "PSD",
                       ".exr": "OpenEXR", ".hdr": "Radiance HDR", ".ppm": "PPM", ".pgm": "PGM", ".pbm": "PBM",
                       ".pnm": "PNM", ".svg": "SVG", ".dds": "DDS", ".qoi": "QOI", ".apng": "APNG"}
# Characters no file name may hold on some common file system (Windows forbids <>:"|?* and \).
_NOT_IN_NAMES = frozenset('/\\<>:"|?*') | frozenset(chr(i) for i in range(32))
# The longest file name most file systems hold (bytes), and what the temporary file beside an
# output adds to its name (`.NAME.PID.XXXXXXXX.tmp`, imaging.io's atomic write; pids up to 7 digits).
NAME_MAX = 255
TEMP_NAME_EXTRA = 22
# What srkd's default suffix looks like (`_x4`, `_x3.5`): the mark of an earlier run's output.
_SCALE_SUFFIX = re.compile(r"_x\d+(?:\.\d+)?$")


@dataclass
class OutputOptions:
    output: Union[str, Path, None] = None  # a file (one input), a folder, or "-" (stdout); None: beside each input
    suffix: Optional[str] = None  # None: "_x{scale}"
    format: Optional[str] = None  # None: the input's own format (or the -o file's suffix)
    quality: int = 95
    overwrite: bool = False
    png_compression: int = PNG_COMPRESSION  # zlib level 0-9
    skip_existing: bool = False  # an output that exists and decodes is done: its input is skipped
    outscale: Optional[float] = None  # a final scale below the model's (Real-ESRGAN's -s 3.5): resampled down to it


@dataclass
class Job:
    input: Path
    output: Path
    name: Optional[str] = None  # what messages call the input when not its path ("-" for stdin)

    @property
    def shown(self) -> str:
        return self.name or str(self.input)


@dataclass
class FileResult:
    input: str
    output: Optional[str]
    ok: bool
    size_in: Optional[Tuple[int, int]] = None  # (width, height)
    size_out: Optional[Tuple[int, int]] = None
    seconds: float = 0.0
    error: Optional[str] = None
    rank: int = 0  # the torchrun rank that did it
    skipped: bool = False  # --skip-existing: the output was already there

    def to_dict(self) -> Dict:
        return asdict(self)


@dataclass
class Inputs:
    """What the input arguments name."""

    files: List[Tuple[Path, Path]] = field(default_factory=list)  # (file, its path under the folder it was found in)
    failed: List[FileResult] = field(default_factory=list)  # named files that cannot be used
    unmatched: List[str] = field(default_factory=list)  # patterns and folders with no image: errors, no image to count
    earlier_outputs: List[Path] = field(default_factory=list)  # srkd's own outputs found in folders and globs, left out
    in_output_folder: List[Path] = field(default_factory=list)  # images under -o DIR inside a walked folder, left out


def collect_inputs(inputs: Sequence[str], recursive: bool, suffix: Optional[str] = None,
                   output_folder: Union[str, Path, None] = None) -> Inputs:
    """The files named by files, folders and globs; a failed result for each named file that is
    not a usable image, and a message for each pattern or folder that gives no image.

    Folders and globs leave out the outputs of earlier runs: a file whose name is that of an
    image beside it plus srkd's suffix (`a_x2.png` beside `a.png`, or `--suffix`), so that a
    second run over a folder does not upscale the first run's outputs. A folder also leaves out
    `output_folder` where that lies inside it (`-r in -o in/out`), for the same reason. A file
    named as such is always taken.
    """
    got = Inputs()
    found: Dict[Path, Tuple[Path, Path]] = {}
    stems: Dict[Path, Set[str]] = {}
    out = Path(output_folder).expanduser().resolve() if output_folder is not None else None
    for arg in inputs:
        p = Path(arg).expanduser()
        inside = out is not None and p.is_dir() and out != p.resolve() and out.is_relative_to(p.resolve())
        walled = out if inside else None
        pattern = not p.exists() and any(c in arg for c in "*?[")
        try:
            images = find_images([p if p.exists() else arg], recursive=recursive)
        except InputError as e:
            if pattern or p.is_dir():
                hint = " (`**` descends into sub-folders only with -r/--recursive)" if "**" in arg and not recursive else ""
                got.unmatched.append(f"{e}{hint}")
            else:
                got.failed.append(FileResult(str(arg), None, False, error=str(e)))
            continue
        for f in images:
            if walled is not None and f.resolve().is_relative_to(walled):
                got.in_output_folder.append(f)
                continue
            if (pattern or p.is_dir()) and _earlier_output(f, suffix, stems):
                got.earlier_outputs.append(f)
                continue
            found.setdefault(f.resolve(), (f, f.relative_to(p) if p.is_dir() else Path(f.name)))
    got.files = list(found.values())
    if not got.files and not got.failed:
        if len(got.unmatched) == 1 and not got.earlier_outputs and not got.in_output_folder:
            raise InputError(got.unmatched[0])
        left = f" ({len(got.earlier_outputs)} earlier srkd output(s) left out: name them to upscale them)" if got.earlier_outputs else ""
        if got.in_output_folder:
            left += f" ({len(got.in_output_folder)} image(s) in the output folder {output_folder} left out)"
        raise InputError(f"no images found in {' '.join(inputs)}{left}")
    return got


def _earlier_output(f: Path, suffix: Optional[str], stems: Dict[Path, Set[str]]) -> bool:
    """`f` is an image beside it with srkd's default suffix (or `suffix`) added to its name."""
    bases = []
    m = _SCALE_SUFFIX.search(f.stem)
    if m and m.start() > 0:
        bases.append(f.stem[:m.start()])
    if suffix and len(f.stem) > len(suffix) and f.stem.endswith(suffix):
        bases.append(f.stem[:-len(suffix)])
    if not bases:
        return False
    if f.parent not in stems:
        stems[f.parent] = {q.stem for q in list_images(f.parent)}
    return any(b in stems[f.parent] for b in bases)


def check_suffix(suffix: Optional[str]) -> None:
    """--suffix must stay inside the file's name: `/../../evil` would write elsewhere."""
    if suffix and (".." in suffix or any(c in _NOT_IN_NAMES for c in suffix)):
        raise ConfigError(f"--suffix {suffix!r}: must be part of a file name (no path separator, no '..', "
                          'none of <>:"|?* or control characters)')


def output_kind(output: Union[str, Path, None]) -> str:
    """'beside', 'stdout', 'file' or 'folder' for -o; a name that looks like a file srkd cannot
    write (`out.gif`, `out.xyz`) is refused rather than made a folder."""
    if output is None:
        return "beside"
    text = os.fspath(output)
    if text == "-":
        return "stdout"
    p = Path(text).expanduser()
    if p.is_dir() or text.endswith(("/", os.sep)):
        return "folder"
    suffix = p.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "file"
    if re.fullmatch(r"\.[a-z][a-z0-9]{0,4}", suffix):
        what = f"srkd cannot write {OTHER_IMAGE_FORMATS[suffix]} images" if suffix in OTHER_IMAGE_FORMATS \
            else f"{p.suffix} is not an image format srkd writes"
        raise ConfigError(f"-o {text}: {what} (.png, .jpg, .webp, .tif or .bmp); "
                          f"for a folder of that name, end it with '/' or create it first")
    return "folder"


def _suffix_for(fmt: Optional[str], fallback: str) -> str:
    if fmt is None:
        return fallback.lower() if fallback.lower() in IMAGE_SUFFIXES else ".png"
    key = fmt.lower().lstrip(".")
    if key not in FORMAT_SUFFIX:
        raise ConfigError(f"--format {fmt}: choose png, jpg, webp, tif or bmp")
    return FORMAT_SUFFIX[key]


def plan_jobs(files: List[Tuple[Path, Path]], opts: OutputOptions, scale: Union[int, float]
              ) -> Tuple[List[Job], List[FileResult], List[FileResult]]:
    """(jobs, failed, skipped): where each input's output goes; conflicts become failed results,
    never silent overwrites; with `skip_existing`, an output that exists and decodes is skipped.

    `-o` with an image suffix (and not an existing folder) names the output file of a single
    input; `-o -` sends it to stdout; otherwise it is a folder, and folder inputs keep their
    sub-folder structure in it. `scale` is the final scale, which names the default suffix.
    """
    kind = output_kind(opts.output)
    out = None if kind in ("beside", "stdout") else Path(opts.output).expanduser()
    check_suffix(opts.suffix)
    if opts.format:
        _suffix_for(opts.format, ".png")  # validates it
    if kind == "stdout":
        if not opts.format:
            raise ConfigError("-o -: give --format (png, jpg, webp, tif or bmp); stdout has no name to take it from")
        if len(files) != 1:
            raise ConfigError(f"-o -: writes one image to stdout, but there are {len(files)} inputs")
        return [Job(files[0][0], STDOUT)], [], []
    if kind == "file":
        if len(files) > 1:
            raise ConfigError(f"-o {out}: names one file, but there are {len(files)} inputs (give a folder)")
        if opts.format and SUFFIX_FORMAT[out.suffix.lower()] != SUFFIX_FORMAT[_suffix_for(opts.format, "")]:
            raise ConfigError(f"-o {out} and --format {opts.format} disagree (drop one or make them match)")
    suffix = f"_x{scale:g}" if opts.suffix is None else opts.suffix
    jobs, failed, skipped, taken = [], [], [], {}
    inputs = {f.resolve() for f, _ in files}
    for f, rel in files:
        if kind == "file":
            target = out
        else:
            ext = _suffix_for(opts.format, f.suffix)
            folder = f.parent if out is None else out / rel.parent
            target = folder / f"{f.stem}{suffix}{ext}"
        size = len(os.fsencode(target.name))
        if size > NAME_MAX - TEMP_NAME_EXTRA:  # one image's problem, not the batch's: the others go on
            failed.append(FileResult(str(f), str(target), False, error=f"{target}: file name too long ({size} bytes; "
                                     f"at most {NAME_MAX - TEMP_NAME_EXTRA}: use a shorter --suffix or -o FILE)"))
            continue
        try:
            key = target.resolve()
            is_dir, exists = target.is_dir(), target.exists()
        except OSError as e:
            failed.append(FileResult(str(f), str(target), False, error=f"{target}: cannot use it ({e.strerror or e})"))
            continue
        if key in inputs:
            failed.append(FileResult(str(f), str(target), False, error=f"{target}: would overwrite an input (use another -o or --suffix)"))
        elif key in taken:
            failed.append(FileResult(str(f), str(target), False, error=f"{target}: also the output of {taken[key]}"))
        elif is_dir:
            failed.append(FileResult(str(f), str(target), False, error=f"{target}: is a folder"))
        elif exists and opts.skip_existing and image_decodes(target):
            skipped.append(FileResult(str(f), str(target), True, skipped=True))
        elif exists and not opts.overwrite:
            why = ("exists but does not decode (use --overwrite to replace it)" if opts.skip_existing
                   else "already exists (use --skip-existing to keep it, --overwrite to replace it)")
            failed.append(FileResult(str(f), str(target), False, error=f"{target}: {why}"))
        else:
            taken[key] = f
            jobs.append(Job(f, target))
    return jobs, failed, skipped
