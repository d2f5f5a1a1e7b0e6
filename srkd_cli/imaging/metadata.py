"""Image metadata at the byte level: EXIF and ICC carried from one file into another.

EXIF is patched in place (orientation reset to 1, PixelX/YDimension set to the written size)
rather than re-serialised, so every other byte keeps its offset and maker notes stay valid.
The IFD walkers read classic TIFF structure, which EXIF is. ICC goes into 16-bit colour TIFF
as an appended tag and into 16-bit PNG as an iCCP chunk (EXIF as eXIf), because OpenCV, which
encodes those, writes no metadata.
"""

from __future__ import annotations

import struct
import zlib
from typing import Optional, Union

from PIL import Image as PILImage

EXIF_PREFIX = b"Exif\x00\x00"
ORIENTATION = 0x0112
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_ICC_TAG = 34675  # TIFF's InterColorProfile
_PIXEL_X, _PIXEL_Y = 0xA002, 0xA003  # in the Exif IFD: the image's width and height
# TIFF keeps EXIF-like tags among its structural ones; these are the descriptive ones worth
# carrying into another file.
_TIFF_EXIF_TAGS = (0x010E, 0x010F, 0x0110, ORIENTATION, 0x0131, 0x0132, 0x013B, 0x8298,
                   _EXIF_IFD, _GPS_IFD)


def exif_of(im: PILImage.Image, fmt: str) -> tuple[Optional[bytes], int]:
    """(EXIF bytes to carry with orientation reset to 1, the orientation to apply)."""
    try:
        if fmt == "TIFF":
            return _exif_from_tiff(im)
        raw = im.info.get("exif")
        if isinstance(raw, str):
            raw = raw.encode("latin-1")
        if not raw:
            return None, 1
        if not raw.startswith(EXIF_PREFIX):
            raw = EXIF_PREFIX + raw
        exif = PILImage.Exif()
        exif.load(raw)
        orientation = int(exif.get(ORIENTATION, 1) or 1)
        if orientation == 1:
            return raw, 1
        return reset_orientation(raw), orientation if 1 <= orientation <= 8 else 1
    except (OSError, ValueError, SyntaxError, struct.error, KeyError, TypeError):
        return None, 1  # unreadable EXIF is dropped rather than failing the image


def _exif_from_tiff(im: PILImage.Image) -> tuple[Optional[bytes], int]:
    """TIFF mixes EXIF-like tags with its structure; carry only the descriptive ones."""
    tags = im.getexif()
    orientation = int(tags.get(ORIENTATION, 1) or 1)
    out = PILImage.Exif()
    for tag in _TIFF_EXIF_TAGS:
        if tag not in tags:
            continue
        out[tag] = tags.get_ifd(tag) if tag in (_EXIF_IFD, _GPS_IFD) else tags[tag]
    if ORIENTATION in out:
        out[ORIENTATION] = 1
    if not len(out):
        return None, orientation
    raw = out.tobytes()
    return (raw if raw.startswith(EXIF_PREFIX) else EXIF_PREFIX + raw), orientation


def reset_orientation(raw: bytes) -> bytes:
    """EXIF with orientation 1, every other byte left as it was (re-serialising would move
    offsets that maker notes depend on); Pillow re-serialises only when patching fails."""
    data = bytearray(raw)
    if tiff_orientation_to_1(data, len(EXIF_PREFIX)):
        return bytes(data)
    exif = PILImage.Exif()
    exif.load(raw)
    exif[ORIENTATION] = 1
    out = exif.tobytes()
    return out if out.startswith(EXIF_PREFIX) else EXIF_PREFIX + out


def _ifd_entries(data: Union[bytearray, memoryview], start: int, sub: Optional[int] = None):
    """(byte order, [(entry offset, tag, type, count)]) of the first IFD of the classic TIFF at
    data[start:], or of the IFD its tag `sub` points to; None where there is none."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(data[start:start + 2]))
    if order is None or len(data) < start + 8:
        return None
    magic, ifd = struct.unpack_from(order + "HI", data, start + 2)
    entries = _read_ifd(data, start + ifd, order) if magic == 42 else None
    if entries is not None and sub is not None:
        pointer = [e for e in entries if e[1] == sub and e[2] in (4, 13) and e[3] == 1]  # LONG or IFD
        entries = _read_ifd(data, start + struct.unpack_from(order + "I", data, pointer[0][0] + 8)[0], order) \
            if pointer else None
    return None if entries is None else (order, entries)


def _read_ifd(data: Union[bytearray, memoryview], ifd: int, order: str):
    if ifd + 2 > len(data):
        return None
    (count,) = struct.unpack_from(order + "H", data, ifd)
    if ifd + 2 + 12 * count > len(data):
        return None
    return [(ifd + 2 + 12 * i, *struct.unpack_from(order + "HHI", data, ifd + 2 + 12 * i)) for i in range(count)]


def tiff_orientation_to_1(data: Union[bytearray, memoryview], start: int = 0) -> bool:
    """Set the orientation entry of the first IFD of the TIFF structure at data[start:] to 1,
    in place. False when there is none (or the structure is not classic TIFF)."""
    found = _ifd_entries(data, start)
    if found is None:
        return False
    order, entries = found
    for entry, tag, kind, _ in entries:
        if tag == ORIENTATION and kind == 3:  # SHORT: the value sits in the entry
            struct.pack_into(order + "H", data, entry + 8, 1)
            return True
    return False


def set_pixel_dimensions(exif: bytes, width: int, height: int) -> bytes:
    """EXIF whose PixelXDimension/PixelYDimension (if present) say the written size, patched in
    place like the orientation (every other byte kept, so maker-note offsets stay valid)."""
    data = bytearray(exif)
    found = _ifd_entries(data, len(EXIF_PREFIX), _EXIF_IFD)
    if found is None:
        return exif
    order, entries = found
    for entry, tag, kind, count in entries:
        if tag in (_PIXEL_X, _PIXEL_Y) and kind in (3, 4) and count == 1:
            value = width if tag == _PIXEL_X else height
            # SHORT or LONG are both valid for these tags; LONG also fits in the entry
            struct.pack_into(order + "HII", data, entry + 2, 4, 1, value)
    return bytes(data)


def icc_fits(icc: bytes, channels: int) -> bool:
    """A gray profile cannot describe RGB pixels nor the reverse; such a pair is dropped."""
    space = icc[16:20] if len(icc) >= 20 else b""
    if space == b"GRAY":
        return channels == 1
    if space == b"RGB ":
        return channels == 3
    return True


def normalise_exif(exif: Optional[bytes]) -> Optional[bytes]:
    """EXIF as Pillow writes it: 'Exif\\0\\0' + TIFF data; anything unrecognisable is dropped."""
    if not exif:
        return None
    body = exif[len(EXIF_PREFIX):] if exif.startswith(EXIF_PREFIX) else exif
    return EXIF_PREFIX + body if body[:4] in (b"II*\x00", b"MM\x00*") else None


def tiff_add_icc(tiff: bytes, icc: bytes) -> bytes:
    """The classic TIFF with an ICC profile tag (34675) in its first IFD.

    The profile and a copy of the IFD with the tag added are appended and the header pointed
    at the copy; nothing already in the file moves, so every offset in it stays valid.
    """
    data = bytearray(tiff)
    found = _ifd_entries(data, 0)
    if found is None:
        return tiff  # not classic TIFF (BigTIFF): written without the profile
    order, entries = found
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    (next_ifd,) = struct.unpack_from(order + "I", data, ifd + 2 + 12 * len(entries))
    data += b"\0" * (len(data) % 2)  # TIFF offsets are word-aligned
    icc_at = len(data)
    data += icc + b"\0" * (len(icc) % 2)
    raw = {tag: bytes(data[e:e + 12]) for e, tag, _, _ in entries if tag != _ICC_TAG}
    raw[_ICC_TAG] = struct.pack(order + "HHII", _ICC_TAG, 7, len(icc), icc_at)  # UNDEFINED bytes
    new_ifd = len(data)
    data += struct.pack(order + "H", len(raw)) + b"".join(raw[t] for t in sorted(raw)) + struct.pack(order + "I", next_ifd)
    struct.pack_into(order + "I", data, 4, new_ifd)
    return bytes(data)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_insert_chunks(png: bytes, chunks: list[tuple[bytes, bytes]]) -> bytes:
    """Insert chunks before the first IDAT, replacing colour/EXIF chunks they supersede."""
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG stream")
    superseded = {kind for kind, _ in chunks}
    if b"iCCP" in superseded:
        superseded.add(b"sRGB")  # a PNG may not have both
    out, pos, inserted = [PNG_SIGNATURE], len(PNG_SIGNATURE), False
    while pos + 8 <= len(png):
        length, kind = struct.unpack_from(">I4s", png, pos)
        end = pos + 12 + length
        if kind == b"IDAT" and not inserted:
            out.extend(png_chunk(k, d) for k, d in chunks)
            inserted = True
        if kind not in superseded:
            out.append(png[pos:end])
        pos = end
    return b"".join(out)


def png_add_metadata(png: bytes, icc: Optional[bytes], exif: Optional[bytes]) -> bytes:
    """The PNG stream with an iCCP chunk for `icc` and an eXIf chunk for `exif` (as
    `normalise_exif` returns it), each replacing any chunk it supersedes."""
    chunks = []
    if icc:
        chunks.append((b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    if exif:
        chunks.append((b"eXIf", exif[len(EXIF_PREFIX):]))
    return _png_insert_chunks(png, chunks) if chunks else png
