"""Image files <-> tensors: reading, atomic writing, and finding the images a user named.

Inside srkd an image is a float32 tensor (1, C, H, W) in [0, 1]: C = 3 for colour, 1 for
grayscale; alpha travels beside it as (1, 1, H, W). This module (with `metadata`, which patches
EXIF and ICC bytes) is the only place that knows about files: bit depth, palettes, CMYK, EXIF
orientation, ICC profiles and EXIF bytes are handled here so the rest of the code sees RGB
(or gray) tensors only.

Readers: PNG, JPEG, WebP, BMP, TIFF at 8 bits, PNG and TIFF also at 16 bits. Pillow truncates
16-bit colour PNG/TIFF to 8 bits, so 16-bit files are decoded with OpenCV and their metadata
is still taken from Pillow's header parse.
"""

from __future__ import annotations

import glob
import io
import stat
import struct
import threading
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Optional, Union

import cv2
import numpy as np
import torch
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from srkd_cli.atomic import atomic_file
from srkd_cli.errors import InputError, OutputError

from .metadata import (ORIENTATION, PNG_SIGNATURE, exif_of, icc_fits, normalise_exif, png_add_metadata, png_chunk,
                       set_pixel_dimensions, tiff_add_icc, tiff_orientation_to_1)

# Pillow's own refusal threshold (2 x its MAX_IMAGE_PIXELS default of 89,478,485), about
# 179 megapixels, e.g. 16384 x 10922. Decoded to a float32 RGB tensor that is ~2.1 GB, and the
# upscaled output is s^2 times more, so larger inputs are refused unless asked for.
DEFAULT_MAX_PIXELS = 178_956_970

# zlib level for PNG output. 1 deflates a 1024x1024 photo 4.7x faster than Pillow's default 6
# (0.09 vs 0.43 s here, longer than SqueezeSR takes to make it) for a file 13 % larger.
PNG_COMPRESSION = 1
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})

_SUFFIX_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
    ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
}
# Pillow's names for the formats we accept; MPO is what Pillow calls a camera JPEG that
# carries a second (preview) frame.
_READ_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WEBP",
                 "BMP": "BMP", "DIB": "BMP", "TIFF": "TIFF"}
_WRITE_FORMATS = frozenset(_SUFFIX_FORMATS.values())
_SIXTEEN_BIT_FORMATS = frozenset({"PNG", "TIFF"})
_NO_ALPHA_FORMATS = frozenset({"JPEG", "BMP"})

# Image.MAX_IMAGE_PIXELS is global; this lock keeps our temporary change to it from
# interleaving between threads of srkd.
_PIL_LIMIT_LOCK = threading.Lock()
# Errors decoders raise on damaged data.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
                  IndexError, cv2.error, PILImage.DecompressionBombError)


@dataclass
class Image:
    """A decoded image and what is needed to write its upscaled version faithfully."""

    rgb: torch.Tensor               # (1, C, H, W) float32 in [0, 1]; C = 3 colour, 1 grayscale
    alpha: Optional[torch.Tensor]   # (1, 1, H, W) float32 in [0, 1], or None
    bit_depth: int                  # 8 or 16
    mode: str                       # the file's mode as Pillow names it; 16-bit colour: 'RGB;16'
    icc_profile: Optional[bytes]
    exif: Optional[bytes]           # 'Exif\0\0' + TIFF data, orientation already reset to 1
    format: str                     # 'PNG', 'JPEG', 'WEBP', 'BMP' or 'TIFF'
    path: Path

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) after EXIF orientation."""
        return int(self.rgb.shape[-1]), int(self.rgb.shape[-2])


# --------------------------------------------------------------------------- reading


@dataclass
class Header:
    """What a file's header says, before any pixel is decoded."""

    width: int      # as stored: EXIF orientation may swap width and height
    height: int
    format: str     # 'PNG', 'JPEG', 'WEBP', 'BMP' or 'TIFF'
    channels: int   # planes read_image gives: 1 grey or 3 colour, plus 1 for alpha
    frames: int     # pages of a TIFF, frames of an animated PNG or WebP; only the first is read


def probe_image(path: Union[str, Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> Header:
    """The header of an image file, with the checks `read_image` makes before decoding
    (missing, empty, unsupported, more pixels than `max_pixels`): cheap whatever the image's size."""
    path = _existing_file(path)
    with _read_errors(path), _open_header(path) as im:
        fmt = _checked_format(path, im, max_pixels)
        has_alpha = "A" in im.mode or im.info.get("transparency") is not None
        grey = im.mode in ("1", "L", "LA", "La", "F") or im.mode.startswith("I")
        frames = 1 if fmt == "JPEG" else int(getattr(im, "n_frames", 1) or 1)  # MPO: a preview, not a page
        return Header(im.size[0], im.size[1], fmt, (1 if grey else 3) + has_alpha, frames)


def read_image(path: Union[str, Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> Image:
    """Decode an image file; any problem with the file raises InputError('<path>: <cause>').

    The pixel count claimed by the header is checked against `max_pixels` before any pixel
    is decoded. EXIF orientation is applied to the pixels and reset to 1 in the carried EXIF.
    Palette images become RGB(A), CMYK becomes RGB (through its ICC profile when it has one),
    gray stays one channel.
    """
    path = _existing_file(path)
    with _read_errors(path), _open_header(path) as im:
        fmt = _checked_format(path, im, max_pixels)
        layout = _sixteen_bit_layout(path, im, fmt)
        if layout is not None:
            return _read_with_cv2(path, im, fmt, *layout)
        return _read_with_pil(path, im, fmt)


def image_decodes(path: Union[str, Path]) -> bool:
    """True when the whole file decodes (8-bit is enough to tell): `srkd upscale --skip-existing`
    takes such an output as done. No pixel limit: outputs are larger than inputs by design."""
    try:
        with _open_header(Path(path)) as im:
            im.load()
        return True
    except Exception:  # Pillow cannot do every 16-bit layout: ask srkd's own reader, as inputs are read
        try:
            read_image(path, max_pixels=1 << 62)
            return True
        except Exception:  # any failure to decode means "not done"
            return False


def _existing_file(path: Union[str, Path]) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file ({_file_kind(path)}); give an image file")
    return path


@contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """Every way reading a file can fail, as InputError('<path>: <cause>')."""
    try:
        if path.stat().st_size == 0:
            raise InputError(f"{path}: empty file (0 bytes)")
        yield
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{path}: not enough memory to decode this image") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image srkd can read "
                         "(PNG, JPEG, WebP, BMP or TIFF expected)") from None
    except _DECODE_ERRORS as e:
        raise InputError(f"{path}: corrupt or truncated image ({_one_line(e)})") from None


def _checked_format(path: Path, im: PILImage.Image, max_pixels: int) -> str:
    """The format srkd reads the file as; InputError for other formats and for bombs."""
    fmt = _READ_FORMATS.get(im.format or "")
    if fmt is None:
        raise InputError(f"{path}: {im.format or 'unknown'} images are not supported "
                         "(srkd reads PNG, JPEG, WebP, BMP and TIFF)")
    width, height = im.size
    if width * height > max_pixels:
        raise InputError(
            f"{path}: claimed size {width}x{height} ({_megapixels(width * height)}) "
            f"exceeds the limit of {_megapixels(max_pixels)}; refusing to decode "
            "(possible decompression bomb)")
    return fmt


def _megapixels(n: int) -> str:
    """179 MP, or 4096 pixels where MP would round to 0."""
    return f"{n / 1e6:.0f} MP" if n >= 500_000 else f"{n} pixels"


def read_uint8(path: Union[str, Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """`read_image` as 8-bit pixels, for evaluation and training: HxW (gray) or HxWx3 uint8.

    Alpha is dropped, 16-bit samples are rounded to 8 bits, EXIF orientation is applied.
    """
    arr = _quantise(read_image(path, max_pixels).rgb[0], 8)
    return arr[:, :, 0] if arr.shape[2] == 1 else arr


def _open_header(path: Path) -> PILImage.Image:
    """Image.open with Pillow's own bomb check off: read_image checks against its own limit
    with a message naming the file. Image.open parses only the header; nothing is decoded."""
    with _PIL_LIMIT_LOCK:
        saved = PILImage.MAX_IMAGE_PIXELS
        PILImage.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
                return PILImage.open(path)
        finally:
            PILImage.MAX_IMAGE_PIXELS = saved


def _sixteen_bit_layout(path: Path, im: PILImage.Image, fmt: str) -> Optional[tuple[bool, bool]]:
    """(gray, has_alpha) for a file of 16-bit samples, None for 8 bits. Taken from the file's
    header: Pillow reports 16-bit gray+alpha PNG as RGBA and truncates 16-bit colour."""
    if fmt == "PNG":
        with open(path, "rb") as f:
            head = f.read(26)
        if len(head) < 26 or head[12:16] != b"IHDR" or head[24] != 16:
            return None
        colour_type = head[25]
        return colour_type in (0, 4), colour_type in (4, 6)
    if fmt == "TIFF":
        bits = im.tag_v2.get(258, 8)  # BitsPerSample
        bits = max(bits) if isinstance(bits, tuple) else int(bits)
        sample_format = im.tag_v2.get(339, 1)
        sample_format = sample_format[0] if isinstance(sample_format, tuple) else sample_format
        if bits > 16 or sample_format == 3:
            raise InputError(f"{path}: {bits}-bit {'float' if sample_format == 3 else 'integer'}"
                             " TIFF samples are not supported (8- or 16-bit expected)")
        if bits != 16:
            return None
        samples = int(im.tag_v2.get(277, 1))  # SamplesPerPixel
        photometric = im.tag_v2.get(262, 1)
        if photometric not in (1, 2):  # BlackIsZero gray or RGB: what OpenCV decodes faithfully
            raise InputError(f"{path}: 16-bit TIFF with photometric interpretation {photometric} "
                             "is not supported (16-bit gray or RGB expected)")
        gray = photometric == 1
        return gray, samples == (2 if gray else 4)
    return None


def _read_with_pil(path: Path, im: PILImage.Image, fmt: str) -> Image:
    mode = im.mode
    if fmt == "TIFF":
        exif, orientation = exif_of(im, fmt)
        im.load()
        if ORIENTATION not in im.tag_v2:  # recent Pillow orients TIFFs itself while loading
            orientation = 1
    else:
        im.load()  # first: a PNG may keep its EXIF after the pixels
        exif, orientation = exif_of(im, fmt)
    icc = im.info.get("icc_profile") or None
    if mode == "CMYK":
        im, icc = _cmyk_to_rgb(im, icc)
    else:
        im = im.convert(_working_mode(im))
    arr = np.asarray(im)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8:
        raise InputError(f"{path}: {mode} images are not supported (8- or 16-bit expected)")
    return _make_image(path, arr, 8, mode, icc, exif, orientation, fmt)


def _working_mode(im: PILImage.Image) -> str:
    """The mode (L, LA, RGB or RGBA) an 8-bit Pillow image is converted to."""
    mode, has_trns = im.mode, im.info.get("transparency") is not None
    if mode in ("1", "L"):
        return "LA" if has_trns else "L"
    if mode in ("LA", "La"):
        return "LA"
    if mode in ("RGB", "P"):
        return "RGBA" if has_trns else "RGB"
    if mode in ("RGBA", "RGBa", "PA"):
        return "RGBA"
    if mode.startswith("I") or mode == "F":
        return mode  # left as is: _read_with_pil rejects samples that are not 8-bit
    return "RGB"  # RGBX, YCbCr, LAB, HSV


def _cmyk_to_rgb(im: PILImage.Image,
                 icc: Optional[bytes]) -> tuple[PILImage.Image, Optional[bytes]]:
    """CMYK -> RGB through the embedded profile into sRGB; Pillow's naive formula otherwise.

    Pillow already undoes the inversion of Adobe CMYK JPEGs when it decodes them. The CMYK
    profile cannot describe RGB data, so the result carries sRGB's profile or none.
    """
    if icc:
        try:
            from PIL import ImageCms

            srgb = ImageCms.createProfile("sRGB")
            rgb = ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(icc)), srgb,
                                            outputMode="RGB")
            if rgb is not None:
                return rgb, ImageCms.ImageCmsProfile(srgb).tobytes()
        except (ImportError, OSError, ValueError, TypeError):
            pass  # an unusable profile: fall back to the formula below
    return im.convert("RGB"), None


def _read_with_cv2(path: Path, im: PILImage.Image, fmt: str, gray: bool, has_alpha: bool) -> Image:
    """16-bit PNG/TIFF: OpenCV decodes the samples, Pillow's header parse gives metadata."""
    icc = im.info.get("icc_profile") or None
    exif, orientation = exif_of(im, fmt)
    mode = {(True, False): "I;16", (True, True): "LA;16", (False, False): "RGB;16",
            (False, True): "RGBA;16"}[gray, has_alpha]
    # imdecode on bytes read here: cv2.imread cannot open non-ASCII paths on Windows.
    data = np.fromfile(str(path), dtype=np.uint8)
    if fmt == "TIFF" and orientation != 1:
        # OpenCV's TIFF decoder applies the orientation tag whatever the flags say (PNG's
        # does not); hide the tag from it so that the one transposition is done below.
        tiff_orientation_to_1(data.data)
    arr = _quiet_cv2(lambda: cv2.imdecode(data, cv2.IMREAD_UNCHANGED))
    if arr is None:
        raise InputError(f"{path}: corrupt or truncated image (OpenCV could not decode it)")
    if arr.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{path}: {arr.dtype} samples are not supported (8- or 16-bit expected)")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    channels = arr.shape[2]
    if channels == 3:
        arr = arr[:, :, ::-1]
    elif channels == 4:
        arr = arr[:, :, [2, 1, 0, 3]]
    if gray and arr.shape[2] >= 3:  # OpenCV expands gray+alpha to BGRA
        arr = arr[:, :, [0, 3]] if arr.shape[2] == 4 else arr[:, :, :1]
    if not has_alpha and arr.shape[2] in (2, 4):
        arr = arr[:, :, :-1]
    bits = 16 if arr.dtype == np.uint16 else 8
    return _make_image(path, arr, bits, mode, icc, exif, orientation, fmt)


def _quiet_cv2(fn):
    """Run fn with OpenCV's log silenced: libpng/libtiff complaints about a damaged file would
    otherwise reach the terminal beside srkd's own one-line error."""
    try:
        logging = cv2.utils.logging
        saved = logging.getLogLevel()
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    except AttributeError:
        return fn()
    try:
        return fn()
    finally:
        logging.setLogLevel(saved)


def unit_samples(samples: np.ndarray, bits: int = 8) -> torch.Tensor:
    """(H, W, C) integer samples -> (1, C, H, W) float32 in [0, 1]: how every image read here becomes a tensor."""
    x = torch.from_numpy(samples.transpose(2, 0, 1).astype(np.float32))  # a writable copy
    return x.mul_(1.0 / (65535.0 if bits == 16 else 255.0)).unsqueeze(0)


def _make_image(path: Path, arr: np.ndarray, bits: int, mode: str, icc: Optional[bytes],
                exif: Optional[bytes], orientation: int, fmt: str) -> Image:
    """Orient an (H, W, C) uint array, scale to [0, 1] and split colour from alpha."""
    x = unit_samples(_orient(arr, orientation), bits)
    colour = 1 if x.shape[1] in (1, 2) else 3
    alpha = x[:, colour:colour + 1].contiguous() if x.shape[1] in (2, 4) else None
    return Image(rgb=x[:, :colour].contiguous(), alpha=alpha, bit_depth=bits, mode=mode,
                 icc_profile=icc, exif=exif, format=fmt, path=path)


# EXIF orientation -> the transposition that displays the stored pixels upright.
def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return arr[::-1].swapaxes(0, 1)
    if orientation == 7:
        return arr[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return arr[:, ::-1].swapaxes(0, 1)
    return arr


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# --------------------------------------------------------------------------- writing


def write_image(path: Union[str, Path], img_rgb: torch.Tensor, alpha: Optional[torch.Tensor] = None,
                bit_depth: int = 8, icc_profile: Optional[bytes] = None,
                exif: Optional[bytes] = None, format: Optional[str] = None, quality: int = 95,
                overwrite: bool = False, png_compression: int = PNG_COMPRESSION) -> Path:
    """Write (1, C, H, W) [0, 1] pixels (C = 1 or 3) plus optional alpha; return the path.

    The format comes from `format` or the suffix. 16 bits are kept for PNG and TIFF, other
    formats get 8. JPEG and BMP hold no alpha: the image is composited over white. ICC and
    EXIF are carried where the format can hold them (not BMP; 16-bit colour TIFF keeps ICC only).
    JPEG at quality >= 90 keeps full-resolution chroma; WebP at quality 100 is lossless.
    PNG is deflated at `png_compression` (zlib level 0-9; lossless at every level).
    The file appears atomically (temporary file beside it, then rename); missing parent
    folders are created; an existing file is refused unless `overwrite`.
    """
    path = Path(path)
    fmt = _output_format(path, format)
    _check_pixels(img_rgb, alpha, bit_depth, png_compression)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists (pass --overwrite to replace it)")
    encode = _encoder(path, img_rgb, alpha, bit_depth, fmt, icc_profile, exif, quality, png_compression)
    _write_atomically(path, encode, overwrite)
    return path


def encode_image(img_rgb: torch.Tensor, alpha: Optional[torch.Tensor] = None, bit_depth: int = 8,
                 icc_profile: Optional[bytes] = None, exif: Optional[bytes] = None, format: str = "png",
                 quality: int = 95, png_compression: int = PNG_COMPRESSION, name: str = "-") -> bytes:
    """The bytes `write_image` would write, for a stream (`srkd upscale -o -`); `name` is what
    error messages call the destination."""
    fmt = _output_format(Path(name), format)
    _check_pixels(img_rgb, alpha, bit_depth, png_compression)
    buf = io.BytesIO()
    _encoder(Path(name), img_rgb, alpha, bit_depth, fmt, icc_profile, exif, quality, png_compression)(buf)
    return buf.getvalue()


def _check_pixels(img_rgb: torch.Tensor, alpha: Optional[torch.Tensor], bit_depth: int, png_compression: int) -> None:
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, not {bit_depth}")
    if not 0 <= png_compression <= 9:
        raise ValueError(f"png_compression must be 0-9, not {png_compression}")
    if img_rgb.dim() != 4 or img_rgb.shape[0] != 1 or img_rgb.shape[1] not in (1, 3):
        raise ValueError(f"expected a (1, 1|3, H, W) tensor, got {tuple(img_rgb.shape)}")
    if alpha is not None and tuple(alpha.shape) != (1, 1, *img_rgb.shape[2:]):
        raise ValueError(f"alpha {tuple(alpha.shape)} does not match image {tuple(img_rgb.shape)}")


def _encoder(path: Path, img_rgb: torch.Tensor, alpha: Optional[torch.Tensor], bit_depth: int, fmt: str,
             icc_profile: Optional[bytes], exif: Optional[bytes], quality: int,
             png_compression: int) -> Callable[[BinaryIO], None]:
    """Quantise now; return what encodes the result into an open binary file."""
    x = img_rgb.detach().to("cpu", torch.float32)[0]
    a = alpha.detach().to("cpu", torch.float32)[0] if alpha is not None else None
    if a is not None and fmt in _NO_ALPHA_FORMATS:
        a = a.nan_to_num(1.0).clamp(0, 1)
        x = x.nan_to_num(0.0).clamp(0, 1) * a + (1 - a)
        a = None
    if a is not None:
        x = torch.cat([x, a], 0)
    bits = 16 if bit_depth == 16 and fmt in _SIXTEEN_BIT_FORMATS else 8
    arr = _quantise(x, bits)
    del x, a
    channels = img_rgb.shape[1]
    icc = icc_profile if icc_profile and icc_fits(icc_profile, channels) else None
    exif = normalise_exif(exif)
    if exif:
        exif = set_pixel_dimensions(exif, arr.shape[1], arr.shape[0])

    def encode(fp: BinaryIO) -> None:
        try:
            _encode(fp, arr, bits, fmt, icc, exif, quality, png_compression)
        except OSError as e:
            if e.errno is not None:
                raise  # the file system's (disk full, ...): the caller says "cannot write"
            raise OutputError(f"{path}: cannot encode as {fmt} ({_one_line(e)})") from None
        except ValueError as e:  # e.g. WebP's 16383-pixel limit
            raise OutputError(f"{path}: cannot encode as {fmt} ({_one_line(e)})") from None

    return encode


def _output_format(path: Path, format: Optional[str]) -> str:
    if format is None:
        fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise OutputError(f"{path}: cannot tell the format from the suffix "
                              f"(use one of {', '.join(sorted(IMAGE_SUFFIXES))})")
        return fmt
    fmt = {"JPG": "JPEG", "TIF": "TIFF"}.get(format.upper(), format.upper())
    if fmt not in _WRITE_FORMATS:
        raise OutputError(f"{path}: cannot write format {format!r} "
                          "(PNG, JPEG, WEBP, BMP or TIFF)")
    return fmt


def _quantise(x: torch.Tensor, bits: int) -> np.ndarray:
    """(C, H, W) float -> (H, W, C) uint8/uint16, rounding to nearest."""
    top = 65535.0 if bits == 16 else 255.0
    dtype = np.uint16 if bits == 16 else np.uint8
    c, h, w = x.shape
    out = np.empty((h, w, c), dtype)
    # In bands of rows: a full-size float copy of a large output would double the peak memory.
    for y in range(0, h, 256):
        q = x[:, y:y + 256].nan_to_num(0.0).clamp_(0, 1).mul_(top).round_()
        out[y:y + 256] = q.permute(1, 2, 0).numpy().astype(dtype)
    return out


def _encode(fp: BinaryIO, arr: np.ndarray, bits: int, fmt: str, icc: Optional[bytes],
            exif: Optional[bytes], quality: int, png_compression: int = PNG_COMPRESSION) -> None:
    """Encode into `fp`. Pillow streams into the file as it compresses, so a large output needs
    no second, encoded copy in memory, and an interrupt can stop it between blocks."""
    channels = arr.shape[2]
    if bits == 16:
        if fmt == "PNG":
            fp.write(_encode_png16(arr, icc, exif, png_compression))
            return
        if channels == 1:  # Pillow writes 16-bit gray TIFF, with metadata
            _pil_save(fp, PILImage.fromarray(arr[:, :, 0]), fmt, icc, exif, quality)
            return
        if channels == 2:  # no 16-bit gray+alpha TIFF writer at hand: RGBA keeps the bits
            arr = arr[:, :, [0, 0, 0, 1]]
        ok, buf = cv2.imencode(".tiff", _to_bgr(arr))  # colour: OpenCV, which writes no metadata
        if not ok:
            raise OutputError("OpenCV could not encode the 16-bit TIFF")
        # a gray profile does not describe the RGBA that gray+alpha became
        fp.write(tiff_add_icc(buf.tobytes(), icc) if icc and channels != 2 else buf.tobytes())
        return
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    im = PILImage.fromarray(arr[:, :, 0] if channels == 1 else arr, mode)
    _pil_save(fp, im, fmt, icc, exif, quality, png_compression)


def _pil_save(fp: BinaryIO, im: PILImage.Image, fmt: str, icc: Optional[bytes], exif: Optional[bytes],
              quality: int, png_compression: int = PNG_COMPRESSION) -> None:
    options: dict = {}
    if fmt != "BMP":
        if icc:
            options["icc_profile"] = icc
        if exif:
            options["exif"] = exif
    if fmt == "JPEG":
        options.update(quality=quality, subsampling=0 if quality >= 90 else 2)
    elif fmt == "WEBP":
        options.update(quality=quality, lossless=quality >= 100)
    elif fmt == "TIFF":
        options["compression"] = "tiff_adobe_deflate"
    elif fmt == "PNG":
        options["compress_level"] = png_compression
    im.save(fp, fmt, **options)


def _to_bgr(arr: np.ndarray) -> np.ndarray:
    if arr.shape[2] == 3:
        return np.ascontiguousarray(arr[:, :, ::-1])
    if arr.shape[2] == 4:
        return np.ascontiguousarray(arr[:, :, [2, 1, 0, 3]])
    return arr


def _encode_png16(arr: np.ndarray, icc: Optional[bytes], exif: Optional[bytes],
                  level: int = PNG_COMPRESSION) -> bytes:
    """16-bit PNG with metadata: Pillow cannot hold 16-bit colour and OpenCV writes no
    metadata, so OpenCV encodes the pixels and the iCCP/eXIf chunks are added after it.
    OpenCV has no gray+alpha PNG, which is therefore encoded here in full."""
    if arr.shape[2] == 2:
        png = _png_gray_alpha16(arr, level)
    else:
        ok, buf = cv2.imencode(".png", _to_bgr(arr), [cv2.IMWRITE_PNG_COMPRESSION, level])
        if not ok:
            raise OutputError("OpenCV could not encode the 16-bit PNG")
        png = buf.tobytes()
    return png_add_metadata(png, icc, exif)


def _png_gray_alpha16(arr: np.ndarray, level: int = PNG_COMPRESSION) -> bytes:
    height, width = arr.shape[:2]
    raw = arr.astype(">u2").view(np.uint8).reshape(height, width * 4)
    # The Up filter (type 2): each byte minus the one above, which compresses photos well.
    rows = raw.copy()
    rows[1:] -= raw[:-1]
    filtered = np.concatenate([np.full((height, 1), 2, np.uint8), rows], axis=1)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 4, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), level)) + png_chunk(b"IEND", b""))


def _write_atomically(path: Path, write: Callable[[BinaryIO], None], overwrite: bool) -> None:
    """Call `write` on a temporary file beside `path`, then rename it into place, so that a
    reader never sees half a file and a failure (or an interrupt) leaves nothing behind."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{folder}: cannot create the output folder ({_reason(e)})") from None
    try:
        with atomic_file(path, overwrite=overwrite) as f:
            write(f)
    except FileExistsError:
        raise OutputError(f"{path}: already exists (pass --overwrite to replace it)") from None
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({_reason(e)})") from None


def _reason(e: OSError) -> str:
    return e.strerror or _one_line(e)


# --------------------------------------------------------------------------- finding


def find_images(inputs: Iterable[Union[str, Path]], recursive: bool = False) -> list[Path]:
    """The image files named by `inputs`: files, folders (their images, and with `recursive`
    those of subfolders) and glob patterns ('**' descends when `recursive`). Sorted, without
    duplicates; hidden files are skipped inside folders. An input that matches no image
    raises InputError."""
    found: dict[Path, Path] = {}

    def add(p: Path) -> None:
        found.setdefault(p.resolve(), p)

    for item in inputs:
        text = str(item)
        p = Path(item)
        if p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"{p}: not an image file "
                                 f"(expected {', '.join(sorted(IMAGE_SUFFIXES))})")
            add(p)
        elif p.is_dir():
            images = list_images(p, recursive)
            if not images:
                raise InputError(f"{p}: no images in this folder"
                                 + ("" if recursive else " (use --recursive for subfolders)"))
            for image in images:
                add(image)
        elif any(c in text for c in "*?["):
            matched = 0
            for name in sorted(glob.glob(text, recursive=recursive)):
                m = Path(name)
                images = ([m] if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES
                          else list_images(m, recursive) if m.is_dir() else [])
                for image in images:
                    add(image)
                matched += len(images)
            if not matched:
                raise InputError(f"{text}: the pattern matches no images")
        elif p.exists():  # a FIFO, a device (/dev/zero) or a socket: reading it could block or never end
            raise InputError(f"{p}: not a regular file ({_file_kind(p)}); give an image file")
        else:
            raise InputError(f"{p}: no such file or folder")
    return sorted(found.values(), key=lambda q: (str(q.parent), q.name))


def _file_kind(p: Path) -> str:
    mode = p.stat().st_mode
    return ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")


def list_images(folder: Union[str, Path], recursive: bool = False) -> list[Path]:
    """The image files in `folder` (with `recursive`, in its subfolders too), sorted; hidden
    files and hidden subfolders are skipped. The one lister for upscale, eval and training:
    callers check that the folder exists and word their own error for an empty one."""
    folder = Path(folder)
    entries = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        e for e in entries
        if e.suffix.lower() in IMAGE_SUFFIXES and not e.name.startswith(".") and e.is_file()
        and not any(part.startswith(".") for part in e.relative_to(folder).parts[:-1])
    )
