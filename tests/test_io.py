"""Reading, writing and finding images (srkd_cli.imaging.io) on files the tests generate."""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from PIL import ImageCms, ImageOps

from srkd_cli.errors import InputError, OutputError
from srkd_cli.imaging import io as imio
from srkd_cli.imaging.io import (DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, find_images, list_images, read_image,
                                 write_image)
from srkd_cli.imaging.metadata import reset_orientation, set_pixel_dimensions

H, W = 24, 32
RNG = np.random.default_rng(0)


def rand8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def rand16(*shape: int) -> np.ndarray:
    return RNG.integers(0, 65536, size=shape, dtype=np.uint16)


def gradient8() -> np.ndarray:
    """A smooth RGB image: lossy codecs keep it close, unlike noise."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 255 // (W - 1), y * 255 // (H - 1), (x + y) * 255 // (W + H - 2)],
                    axis=2).astype(np.uint8)


def as_uint(t: torch.Tensor, bits: int) -> np.ndarray:
    """(1, C, H, W) [0, 1] -> (H, W, C) integers."""
    top = 65535 if bits == 16 else 255
    arr = (t[0].permute(1, 2, 0).numpy() * top).round()
    return arr.astype(np.uint16 if bits == 16 else np.uint8)


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_bytes(orientation: int = 1, make: str = "SrkdCam") -> bytes:
    exif = PILImage.Exif()
    exif[0x010F] = make
    exif[0x0112] = orientation
    return exif.tobytes()


def exif_tags(raw: bytes) -> PILImage.Exif:
    exif = PILImage.Exif()
    exif.load(raw)
    return exif


def assert_input_error(path: Path, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        read_image(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


# --------------------------------------------------------------------------- round trips


def test_png_8bit_rgb_round_trip_is_exact(tmp_path):
    src = rand8(H, W, 3)
    PILImage.fromarray(src).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert (img.bit_depth, img.mode, img.format, img.alpha) == (8, "RGB", "PNG", None)
    assert img.rgb.dtype == torch.float32 and img.rgb.shape == (1, 3, H, W)
    assert np.array_equal(as_uint(img.rgb, 8), src)
    out = write_image(tmp_path / "b.png", img.rgb, img.alpha, img.bit_depth)
    assert out == tmp_path / "b.png"
    assert np.array_equal(np.asarray(PILImage.open(out)), src)


def test_png_16bit_rgb_round_trip_is_exact(tmp_path):
    src = rand16(H, W, 3)
    cv2.imwrite(str(tmp_path / "a.png"), src[:, :, ::-1])
    img = read_image(tmp_path / "a.png")
    assert (img.bit_depth, img.mode, img.rgb.shape[1]) == (16, "RGB;16", 3)
    assert np.array_equal(as_uint(img.rgb, 16), src)
    write_image(tmp_path / "b.png", img.rgb, None, 16)
    back = cv2.imread(str(tmp_path / "b.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back[:, :, ::-1], src)


@pytest.mark.parametrize("channels,bits", [(3, 8), (1, 8), (3, 16), (2, 16)])
def test_png_compression_level_changes_size_not_pixels(tmp_path, channels, bits):
    """--png-compression: every zlib level decodes to the same pixels; 9 is smallest, 0 stores."""
    yy, xx = np.mgrid[0:64, 0:96]
    smooth = (np.stack([yy * 4, xx * 2, yy + xx], -1)[..., :max(channels, 1)] % 256).astype(np.float32) / 255
    rgb = torch.from_numpy(smooth[..., :1 if channels < 3 else 3]).permute(2, 0, 1)[None].contiguous()
    alpha = rgb[:, :1].flip(-1).contiguous() if channels == 2 else None
    sizes, pixels = {}, {}
    for level in (0, 1, 9):
        out = write_image(tmp_path / f"l{level}.png", rgb, alpha, bits, png_compression=level)
        sizes[level] = out.stat().st_size
        pixels[level] = cv2.imread(str(out), cv2.IMREAD_UNCHANGED) if channels != 2 else np.asarray(PILImage.open(out))
    assert sizes[9] <= sizes[1] < sizes[0]
    assert all(np.array_equal(pixels[0], pixels[k]) for k in (1, 9))
    with pytest.raises(ValueError, match="png_compression"):
        write_image(tmp_path / "bad.png", rgb, alpha, bits, png_compression=10)


def test_png_16bit_rgba_round_trip_is_exact(tmp_path):
    src = rand16(H, W, 4)
    cv2.imwrite(str(tmp_path / "a.png"), src[:, :, [2, 1, 0, 3]])
    img = read_image(tmp_path / "a.png")
    assert (img.bit_depth, img.mode) == (16, "RGBA;16")
    assert np.array_equal(as_uint(img.rgb, 16), src[:, :, :3])
    assert np.array_equal(as_uint(img.alpha, 16)[:, :, 0], src[:, :, 3])
    write_image(tmp_path / "b.png", img.rgb, img.alpha, 16)
    again = read_image(tmp_path / "b.png")
    assert torch.equal(again.rgb, img.rgb) and torch.equal(again.alpha, img.alpha)


def test_png_16bit_gray_stays_one_channel_and_exact(tmp_path):
    src = rand16(H, W)
    PILImage.fromarray(src).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert (img.bit_depth, img.mode, img.rgb.shape[1], img.alpha) == (16, "I;16", 1, None)
    assert np.array_equal(as_uint(img.rgb, 16)[:, :, 0], src)
    write_image(tmp_path / "b.png", img.rgb, None, 16)
    assert np.array_equal(cv2.imread(str(tmp_path / "b.png"), cv2.IMREAD_UNCHANGED), src)


def test_png_16bit_gray_alpha_is_written_as_gray_alpha(tmp_path):
    gray, alpha = rand16(H, W), rand16(H, W)
    rgb = torch.from_numpy(gray / 65535.0).float()[None, None]
    a = torch.from_numpy(alpha / 65535.0).float()[None, None]
    write_image(tmp_path / "la.png", rgb, a, 16)
    with PILImage.open(tmp_path / "la.png") as check:  # a valid PNG for other readers
        check.load()
    header = (tmp_path / "la.png").read_bytes()[:26]
    assert (header[24], header[25]) == (16, 4)
    img = read_image(tmp_path / "la.png")
    assert (img.bit_depth, img.mode, img.rgb.shape[1]) == (16, "LA;16", 1)
    assert np.array_equal(as_uint(img.rgb, 16)[:, :, 0], gray)
    assert np.array_equal(as_uint(img.alpha, 16)[:, :, 0], alpha)


@pytest.mark.parametrize("mode,channels", [("RGBA", 3), ("LA", 1)])
def test_png_8bit_alpha_round_trip(tmp_path, mode, channels):
    src = rand8(H, W, channels + 1)
    PILImage.fromarray(src, mode).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.mode == mode and img.rgb.shape[1] == channels and img.alpha.shape == (1, 1, H, W)
    assert np.array_equal(as_uint(img.rgb, 8), src[:, :, :channels])
    assert np.array_equal(as_uint(img.alpha, 8)[:, :, 0], src[:, :, channels])
    write_image(tmp_path / "b.png", img.rgb, img.alpha, 8)
    assert np.array_equal(np.asarray(PILImage.open(tmp_path / "b.png")), src.squeeze())


def test_palette_with_transparency_reads_as_rgba(tmp_path):
    index = RNG.integers(0, 4, size=(H, W), dtype=np.uint8)
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9]
    im = PILImage.fromarray(index, "P")
    im.putpalette(palette)
    im.save(tmp_path / "p.png", transparency=3)
    img = read_image(tmp_path / "p.png")
    assert img.mode == "P" and img.rgb.shape[1] == 3 and img.alpha is not None
    expected = np.array(palette, np.uint8).reshape(4, 3)[index]
    assert np.array_equal(as_uint(img.rgb, 8)[index != 3], expected[index != 3])
    assert np.array_equal(as_uint(img.alpha, 8)[:, :, 0], np.where(index == 3, 0, 255))


def test_palette_without_transparency_reads_as_rgb(tmp_path):
    PILImage.fromarray(gradient8()).convert("P").save(tmp_path / "p.png")
    img = read_image(tmp_path / "p.png")
    assert img.rgb.shape[1] == 3 and img.alpha is None


def test_cmyk_jpeg_reads_as_rgb_close_to_the_original(tmp_path):
    src = gradient8()
    PILImage.fromarray(src).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    with PILImage.open(tmp_path / "c.jpg") as check:
        assert check.mode == "CMYK"
    img = read_image(tmp_path / "c.jpg")
    assert img.mode == "CMYK" and img.rgb.shape == (1, 3, H, W)
    diff = np.abs(as_uint(img.rgb, 8).astype(int) - src.astype(int))
    assert diff.mean() < 3 and diff.max() < 40


def test_cmyk_with_an_unusable_profile_falls_back_and_drops_it(tmp_path):
    PILImage.fromarray(gradient8()).convert("CMYK").save(tmp_path / "c.jpg",
                                                          icc_profile=b"not a profile" * 20)
    img = read_image(tmp_path / "c.jpg")
    assert img.rgb.shape == (1, 3, H, W) and img.icc_profile is None


@pytest.mark.parametrize("suffix,lossless", [(".bmp", True), (".tif", True), (".webp", True),
                                             (".jpg", False)])
def test_8bit_rgb_formats_round_trip(tmp_path, suffix, lossless):
    src = gradient8()
    x = torch.from_numpy(src / 255.0).float().permute(2, 0, 1)[None]
    write_image(tmp_path / f"a{suffix}", x, None, 8, quality=100 if suffix == ".webp" else 95)
    img = read_image(tmp_path / f"a{suffix}")
    assert img.format == imio._SUFFIX_FORMATS[suffix] and img.rgb.shape == (1, 3, H, W)
    got = as_uint(img.rgb, 8).astype(int)
    if lossless:
        assert np.array_equal(got, src)
    else:
        assert np.abs(got - src).mean() < 2


@pytest.mark.parametrize("suffix", [".jpg", ".bmp", ".tif"])
def test_gray_stays_one_channel(tmp_path, suffix):
    src = gradient8()[:, :, 0]
    PILImage.fromarray(src).save(tmp_path / f"g{suffix}")
    img = read_image(tmp_path / f"g{suffix}")
    assert img.mode == "L" and img.rgb.shape == (1, 1, H, W) and img.alpha is None


def test_16bit_tiff_round_trip_is_exact(tmp_path):
    src = rand16(H, W, 3)
    cv2.imwrite(str(tmp_path / "a.tif"), src[:, :, ::-1])
    img = read_image(tmp_path / "a.tif")
    assert (img.bit_depth, img.format, img.mode) == (16, "TIFF", "RGB;16")
    assert np.array_equal(as_uint(img.rgb, 16), src)
    write_image(tmp_path / "b.tiff", img.rgb, None, 16)
    assert torch.equal(read_image(tmp_path / "b.tiff").rgb, img.rgb)
    gray = rand16(H, W)
    write_image(tmp_path / "g.tif", torch.from_numpy(gray / 65535.0).float()[None, None], None, 16)
    g = read_image(tmp_path / "g.tif")
    assert g.rgb.shape[1] == 1 and np.array_equal(as_uint(g.rgb, 16)[:, :, 0], gray)


def test_16bit_falls_back_to_8bit_where_the_format_has_no_16bit(tmp_path):
    x = torch.rand(1, 3, H, W)
    write_image(tmp_path / "a.webp", x, None, 16, quality=100)
    img = read_image(tmp_path / "a.webp")
    assert img.bit_depth == 8
    assert np.array_equal(as_uint(img.rgb, 8), as_uint(x, 8))


def test_alpha_is_composited_over_white_for_jpeg(tmp_path):
    rgb = torch.zeros(1, 3, H, W)
    alpha = torch.zeros(1, 1, H, W)
    alpha[..., : H // 2, :] = 1.0  # top half opaque black, bottom half transparent
    write_image(tmp_path / "a.jpg", rgb, alpha, 8)
    img = read_image(tmp_path / "a.jpg")
    assert img.alpha is None
    assert img.rgb[..., :4, :].max() < 0.05 and img.rgb[..., -4:, :].min() > 0.95


def test_values_outside_the_range_are_clipped(tmp_path):
    x = torch.full((1, 3, 4, 4), 0.5)
    x[..., 0, 0], x[..., 0, 1], x[..., 0, 2] = -1.0, 2.0, float("nan")
    write_image(tmp_path / "a.png", x, None, 8)
    arr = np.asarray(PILImage.open(tmp_path / "a.png"))
    assert arr[0, 0, 0] == 0 and arr[0, 1, 0] == 255 and arr[0, 2, 0] == 0 and arr[1, 1, 0] == 128


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow(tmp_path, orientation):
    src = rand8(H, W, 3)
    PILImage.fromarray(src).save(tmp_path / "o.png", exif=exif_bytes(orientation))
    with PILImage.open(tmp_path / "o.png") as im:
        expected = np.asarray(ImageOps.exif_transpose(im))
    img = read_image(tmp_path / "o.png")
    assert np.array_equal(as_uint(img.rgb, 8), expected)
    tags = exif_tags(img.exif)
    assert tags[0x0112] == 1 and tags[0x010F] == "SrkdCam"


def test_jpeg_orientation_6_swaps_dimensions_and_is_reset(tmp_path):
    PILImage.fromarray(gradient8()).save(tmp_path / "o.jpg", exif=exif_bytes(6))
    img = read_image(tmp_path / "o.jpg")
    assert img.rgb.shape[-2:] == (W, H) and img.size == (H, W)
    assert exif_tags(img.exif)[0x0112] == 1
    write_image(tmp_path / "out.jpg", img.rgb, None, 8, exif=img.exif)
    with PILImage.open(tmp_path / "out.jpg") as out:  # a viewer must not rotate it again
        assert out.size == (H, W) and out.getexif()[0x0112] == 1
        assert out.getexif()[0x010F] == "SrkdCam"


def test_orientation_applies_on_the_16bit_path(tmp_path):
    src = rand16(H, W, 3)
    x = torch.from_numpy(src / 65535.0).float().permute(2, 0, 1)[None]
    write_image(tmp_path / "o.png", x, None, 16, exif=exif_bytes(6))
    img = read_image(tmp_path / "o.png")
    assert img.bit_depth == 16 and img.rgb.shape[-2:] == (W, H)
    assert np.array_equal(as_uint(img.rgb, 16), np.rot90(src, k=-1))
    assert exif_tags(img.exif)[0x0112] == 1


def test_tiff_orientation_and_descriptive_tags(tmp_path):
    src = rand8(H, W, 3)
    PILImage.fromarray(src).save(tmp_path / "o.tif", exif=exif_bytes(8))
    img = read_image(tmp_path / "o.tif")
    assert np.array_equal(as_uint(img.rgb, 8), np.rot90(src, k=1))
    tags = exif_tags(img.exif)
    assert tags[0x0112] == 1 and tags[0x010F] == "SrkdCam" and 256 not in tags  # no ImageWidth


@pytest.mark.parametrize("orientation", [3, 6])
def test_16bit_tiff_orientation_is_applied_once(tmp_path, orientation):
    tifffile = pytest.importorskip("tifffile", reason="tifffile writes the 16-bit test TIFF")
    src = rand16(H, W, 3)
    tifffile.imwrite(tmp_path / "o.tif", src, photometric="rgb",
                     extratags=[(0x0112, "H", 1, orientation, True)])
    img = read_image(tmp_path / "o.tif")
    assert img.bit_depth == 16
    expected = np.rot90(src, k=-1) if orientation == 6 else src[::-1, ::-1]
    assert np.array_equal(as_uint(img.rgb, 16), expected)
    assert exif_tags(img.exif)[0x0112] == 1


def test_reset_orientation_changes_only_the_tag():
    raw = exif_bytes(6)
    out = reset_orientation(raw)
    assert len(out) == len(raw) and sum(a != b for a, b in zip(raw, out)) == 1
    assert exif_tags(out)[0x0112] == 1


@pytest.mark.parametrize("suffix,bits", [(".png", 8), (".png", 16), (".jpg", 8), (".webp", 8),
                                         (".tif", 8)])
def test_icc_profile_and_exif_survive_read_then_write(tmp_path, suffix, bits):
    icc = srgb_icc()
    src = (rand16(H, W, 3) if bits == 16 else gradient8())
    if bits == 16:
        PILImage.fromarray(gradient8()).save(tmp_path / "seed.png", icc_profile=icc,
                                             exif=exif_bytes())
        # re-encode the seed as 16-bit through our own writer so the input holds 16 bits
        seed = read_image(tmp_path / "seed.png")
        write_image(tmp_path / f"in{suffix}", torch.from_numpy(src / 65535.0).float()
                    .permute(2, 0, 1)[None], None, 16, seed.icc_profile, seed.exif)
    else:
        PILImage.fromarray(src).save(tmp_path / f"in{suffix}", icc_profile=icc, exif=exif_bytes())
    img = read_image(tmp_path / f"in{suffix}")
    assert img.bit_depth == bits and img.icc_profile == icc
    write_image(tmp_path / f"out{suffix}", img.rgb, img.alpha, img.bit_depth,
                icc_profile=img.icc_profile, exif=img.exif)
    with PILImage.open(tmp_path / f"out{suffix}") as out:  # what any other reader sees
        assert out.info.get("icc_profile") == icc
        assert out.getexif()[0x010F] == "SrkdCam"
    again = read_image(tmp_path / f"out{suffix}")
    assert again.icc_profile == icc and exif_tags(again.exif)[0x010F] == "SrkdCam"
    if bits == 16:
        assert again.bit_depth == 16 and torch.equal(again.rgb, img.rgb)


def _exif_with_dimensions(order: str, kind: int, width: int, height: int) -> bytes:
    """Hand-built EXIF: IFD0 (Make, ExifIFD pointer) -> Exif IFD (PixelX/YDimension of `kind`,
    a 16-byte MakerNote blob), in byte order `order` ("<" or ">")."""
    fmt = {3: "H2x", 4: "I"}[kind]
    ifd0 = struct.pack(order + "H", 2) + struct.pack(order + "HHI4s", 0x010F, 2, 4, b"Cam\0") \
        + struct.pack(order + "HHII", 0x8769, 4, 1, 8 + 2 + 24 + 4) + struct.pack(order + "I", 0)
    note_at = 8 + len(ifd0) + 2 + 36 + 4
    sub = struct.pack(order + "H", 3) + struct.pack(order + "HHI" + fmt, 0xA002, kind, 1, width) \
        + struct.pack(order + "HHI" + fmt, 0xA003, kind, 1, height) \
        + struct.pack(order + "HHII", 0x927C, 7, 16, note_at) + struct.pack(order + "I", 0)
    header = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8)
    return b"Exif\x00\x00" + header + ifd0 + sub + bytes(range(16))


@pytest.mark.parametrize("order,kind", [("<", 3), (">", 3), ("<", 4), (">", 4)])
def test_exif_pixel_dimensions_say_the_written_size(tmp_path, order, kind):
    """PixelX/YDimension follow the upscaled size, patched in place: every other EXIF byte stays."""
    raw = _exif_with_dimensions(order, kind, W, H)
    assert exif_tags(raw).get_ifd(0x8769)[0xA002] == W  # the hand-built EXIF is what a reader expects
    write_image(tmp_path / "out.jpg", torch.rand(1, 3, 3 * H, 2 * W), None, 8, exif=raw)
    with PILImage.open(tmp_path / "out.jpg") as out:
        tags = out.getexif()
        sub = tags.get_ifd(0x8769)
        assert (sub[0xA002], sub[0xA003]) == (2 * W, 3 * H) and tags[0x010F] == "Cam"
        assert sub[0x927C] == bytes(range(16))  # the maker note, where its offset says
    patched = set_pixel_dimensions(raw, 70000, 5)  # wider than a SHORT holds: the entry becomes a LONG
    assert len(patched) == len(raw) and patched[-16:] == raw[-16:]
    assert sum(a != b for a, b in zip(raw, patched)) <= 12
    assert (exif_tags(patched).get_ifd(0x8769)[0xA002], exif_tags(patched).get_ifd(0x8769)[0xA003]) == (70000, 5)
    assert set_pixel_dimensions(b"Exif\x00\x00junk", 1, 1) == b"Exif\x00\x00junk"


@pytest.mark.parametrize("channels", [3, 4])
def test_sixteen_bit_colour_tiff_keeps_its_icc_profile(tmp_path, channels):
    """OpenCV writes 16-bit colour TIFF without metadata; srkd adds the profile after it."""
    icc = srgb_icc()
    src = rand16(H, W, channels)
    x = torch.from_numpy(src / 65535.0).float().permute(2, 0, 1)[None]
    rgb, alpha = x[:, :3], (x[:, 3:] if channels == 4 else None)
    write_image(tmp_path / "out.tif", rgb, alpha, 16, icc_profile=icc)
    with PILImage.open(tmp_path / "out.tif") as im:  # another reader sees the tag
        assert im.info.get("icc_profile") == icc
    back = read_image(tmp_path / "out.tif")
    assert back.bit_depth == 16 and back.icc_profile == icc
    assert np.array_equal(as_uint(back.rgb, 16), src[:, :, :3])
    assert cv2.imread(str(tmp_path / "out.tif"), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_png_chunks_are_inserted_before_image_data_with_valid_crcs(tmp_path):
    x = torch.rand(1, 3, 8, 8)
    write_image(tmp_path / "a.png", x, None, 16, icc_profile=srgb_icc(), exif=exif_bytes())
    data = (tmp_path / "a.png").read_bytes()
    pos, kinds = 8, []
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8: pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        kinds.append(kind)
        pos += 12 + length
    assert kinds.index(b"iCCP") < kinds.index(b"IDAT") > kinds.index(b"eXIf")
    assert b"sRGB" not in kinds and kinds[-1] == b"IEND"


def test_a_gray_profile_is_not_attached_to_rgb_pixels(tmp_path):
    gray_icc = bytearray(srgb_icc())
    gray_icc[16:20] = b"GRAY"
    write_image(tmp_path / "a.png", torch.rand(1, 3, 4, 4), None, 8, icc_profile=bytes(gray_icc))
    assert read_image(tmp_path / "a.png").icc_profile is None


# --------------------------------------------------------------------------- bad inputs


def test_missing_file_and_folder_raise_input_error(tmp_path):
    assert "no such file" in assert_input_error(tmp_path / "nope.png")
    assert "folder" in assert_input_error(tmp_path)


def test_empty_file_raises_input_error(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty" in assert_input_error(tmp_path / "empty.png")


def test_text_file_named_png_raises_input_error(tmp_path):
    (tmp_path / "notes.png").write_text("not an image at all\n" * 20)
    assert "not an image" in assert_input_error(tmp_path / "notes.png")


@pytest.mark.parametrize("bits", [8, 16])
def test_truncated_png_raises_input_error(tmp_path, bits):
    src = rand16(64, 64, 3) if bits == 16 else rand8(64, 64, 3)
    cv2.imwrite(str(tmp_path / "full.png"), src)
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert "corrupt or truncated" in assert_input_error(tmp_path / "cut.png")


def test_truncated_jpeg_raises_input_error(tmp_path):
    PILImage.fromarray(rand8(64, 64, 3)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert_input_error(tmp_path / "cut.jpg")


def test_unsupported_format_raises_input_error(tmp_path):
    PILImage.fromarray(rand8(8, 8, 3)).save(tmp_path / "a.gif")
    assert "GIF" in assert_input_error(tmp_path / "a.gif")


def _patch_png_size(data: bytes, width: int, height: int) -> bytes:
    ihdr = bytearray(data[12:29])  # chunk type + 13 bytes of IHDR data
    struct.pack_into(">II", ihdr, 4, width, height)
    crc = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return data[:12] + bytes(ihdr) + crc + data[33:]


@pytest.mark.parametrize("bits", [8, 16])
def test_decompression_bomb_is_refused_from_the_header(tmp_path, bits):
    cv2.imwrite(str(tmp_path / "small.png"), rand16(4, 4, 3) if bits == 16 else rand8(4, 4, 3))
    bomb = _patch_png_size((tmp_path / "small.png").read_bytes(), 100_000, 100_000)
    (tmp_path / "bomb.png").write_bytes(bomb)
    limit = PILImage.MAX_IMAGE_PIXELS
    message = assert_input_error(tmp_path / "bomb.png")
    assert "100000x100000" in message and "limit" in message
    assert PILImage.MAX_IMAGE_PIXELS == limit  # Pillow's global is restored


def test_max_pixels_is_honoured_both_ways(tmp_path):
    PILImage.fromarray(rand8(H, W, 3)).save(tmp_path / "a.png")
    assert_input_error(tmp_path / "a.png", max_pixels=H * W - 1)
    assert read_image(tmp_path / "a.png", max_pixels=H * W).rgb.shape == (1, 3, H, W)
    assert 150e6 < DEFAULT_MAX_PIXELS < 200e6


# --------------------------------------------------------------------------- writing


def test_write_refuses_an_existing_file_without_overwrite(tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="already exists"):
        write_image(target, torch.rand(1, 3, 4, 4), None, 8)
    assert target.read_bytes() == b"keep me"
    write_image(target, torch.rand(1, 3, 4, 4), None, 8, overwrite=True)
    assert read_image(target).rgb.shape == (1, 3, 4, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_failed_write_leaves_no_temporary_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "a.png"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    import srkd_cli.atomic

    monkeypatch.setattr(srkd_cli.atomic.os, "replace", broken_replace)  # the one atomic writer
    with pytest.raises(OutputError) as info:
        write_image(target, torch.rand(1, 3, 4, 4), None, 8, overwrite=True)
    assert str(target) in str(info.value) and "No space left" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    assert target.read_bytes() == b"old"


def test_write_into_an_unusable_folder_raises_output_error(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OutputError) as info:
        write_image(tmp_path / "file" / "a.png", torch.rand(1, 3, 4, 4), None, 8)
    assert str(tmp_path / "file") in str(info.value) and "\n" not in str(info.value)


def test_write_creates_missing_folders_with_usual_permissions(tmp_path):
    out = write_image(tmp_path / "x" / "y" / "a.png", torch.rand(1, 3, 4, 4), None, 8)
    mask = os.umask(0)
    os.umask(mask)
    assert out.is_file() and stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask


def test_write_rejects_unknown_suffix_and_bad_shapes(tmp_path):
    with pytest.raises(OutputError, match="suffix"):
        write_image(tmp_path / "a.xyz", torch.rand(1, 3, 4, 4), None, 8)
    assert write_image(tmp_path / "a.xyz", torch.rand(1, 3, 4, 4), None, 8, format="png").is_file()
    with pytest.raises(ValueError):
        write_image(tmp_path / "b.png", torch.rand(3, 4, 4), None, 8)
    with pytest.raises(ValueError):
        write_image(tmp_path / "c.png", torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 5), 8)


# --------------------------------------------------------------------------- finding


@pytest.fixture
def tree(tmp_path):
    for name in ["b.png", "a.JPG", "notes.txt", ".hidden.png", "sub/c.webp", "sub/deep/d.tif",
                 ".git/e.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_find_images_in_a_folder(tree):
    assert [p.name for p in find_images([tree], recursive=False)] == ["a.JPG", "b.png"]


def test_find_images_recursive_skips_hidden(tree):
    found = find_images([tree], recursive=True)
    assert [p.relative_to(tree).as_posix() for p in found] == [
        "a.JPG", "b.png", "sub/c.webp", "sub/deep/d.tif"]


def test_list_images_skips_hidden_files_and_folders(tree):
    """The one lister behind upscale folders, eval's HR folders and training's --data."""
    from srkd_cli.training.data import list_images as data_images

    assert [p.name for p in list_images(tree)] == ["a.JPG", "b.png"]
    deep = ["a.JPG", "b.png", "sub/c.webp", "sub/deep/d.tif"]
    assert [p.relative_to(tree).as_posix() for p in list_images(tree, recursive=True)] == deep
    assert [p.relative_to(tree).as_posix() for p in data_images(tree)] == deep


def test_find_images_globs_and_duplicates(tree):
    found = find_images([str(tree / "*.png"), tree / "b.png", str(tree / "sub" / "*")], False)
    assert [p.relative_to(tree).as_posix() for p in found] == ["b.png", "sub/c.webp",
                                                                "sub/deep/d.tif"]
    deep = find_images([str(tree / "**" / "*.tif")], recursive=True)
    assert [p.name for p in deep] == ["d.tif"]


def test_find_images_errors_name_the_input(tree):
    for bad in [tree / "missing.png", str(tree / "*.bmp"), tree / "notes.txt"]:
        with pytest.raises(InputError, match=str(bad).replace("*", r"\*")):
            find_images([bad], recursive=False)
    (tree / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        find_images([tree / "empty"], recursive=True)


def test_image_suffixes():
    assert IMAGE_SUFFIXES == {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
