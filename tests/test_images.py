"""Tests for reptok.images: every mode and format to RGB, every bad input to one clear error.

All fixtures are generated here with Pillow and numpy; nothing is read from the network or the repo.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from reptok import images
from reptok.images import (
    ALLOWED_FORMATS,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    ImageLoadError,
    load_image,
    to_rgb,
)

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise_png(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    # Random pixels do not compress, so cutting the file in half really cuts the pixel data.
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "PNG")


def pixel(image: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite the IHDR chunk to claim another size, with a valid CRC, leaving the pixel data as is."""
    assert png[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + png[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return png[:16] + ihdr + crc + png[33:]


def test_constants() -> None:
    assert MAX_FILE_BYTES == 20 * 1024 * 1024
    assert MAX_PIXELS == 40_000_000
    assert sorted(ALLOWED_FORMATS) == ["BMP", "GIF", "JPEG", "PNG", "WEBP"]
    assert issubclass(ImageLoadError, ValueError)


# --- modes ------------------------------------------------------------------------------------


def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (4, 2), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((3, 1), 1)
    image.info["transparency"] = 0  # index 0 (red) is see-through, index 1 (blue) is not
    return image


def cmyk_jpeg() -> Image.Image:
    image = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # no cyan, full magenta+yellow: red
    return Image.open(io.BytesIO(encode(image, "JPEG", quality=95)))


MODE_CASES: dict[str, tuple[Callable[[], Image.Image], tuple[int, ...], tuple[int, ...]]] = {
    # name: (make image, expected pixel (0, 0), expected pixel (3, 1))
    "P-transparency": (palette_with_transparency, WHITE, BLUE),
    "PA": (lambda: palette_with_transparency().convert("PA"), WHITE, BLUE),
    "LA": (lambda: Image.new("LA", (4, 2), (0, 0)), WHITE, WHITE),
    "LA-opaque": (lambda: Image.new("LA", (4, 2), (40, 255)), (40, 40, 40), (40, 40, 40)),
    "RGBA-transparent": (lambda: Image.new("RGBA", (4, 2), (10, 20, 30, 0)), WHITE, WHITE),
    "RGBA-half": (lambda: Image.new("RGBA", (4, 2), (0, 0, 0, 128)), (127, 127, 127), (127, 127, 127)),
    "RGBA-opaque": (lambda: Image.new("RGBA", (4, 2), (*GREEN, 255)), GREEN, GREEN),
    "1": (lambda: Image.new("1", (4, 2), 1), WHITE, WHITE),
    "L": (lambda: Image.new("L", (4, 2), 77), (77, 77, 77), (77, 77, 77)),
    "RGB": (lambda: Image.new("RGB", (4, 2), RED), RED, RED),
    "YCbCr": (lambda: Image.new("RGB", (4, 2), BLUE).convert("YCbCr"), BLUE, BLUE),
    "RGBa-premultiplied": (
        lambda: Image.new("RGBa", (4, 2), (100, 0, 0, 128)),
        (227, 127, 127),
        (227, 127, 127),
    ),
    "HSV": (lambda: Image.new("RGB", (4, 2), RED).convert("HSV"), RED, RED),
    "LAB-white": (lambda: Image.new("LAB", (4, 2), (255, 128, 128)), WHITE, WHITE),
    "I;16-flat-white": (lambda: Image.new("I;16", (4, 2), 65535), WHITE, WHITE),
    "F-flat": (lambda: Image.new("F", (4, 2), 0.0), BLACK, BLACK),
}


@pytest.mark.parametrize("name", list(MODE_CASES))
def test_to_rgb_modes(name: str) -> None:
    make, expected_corner, expected_other = MODE_CASES[name]
    rgb = to_rgb(make())
    assert rgb.mode == "RGB"
    assert rgb.size == (4, 2)
    assert pixel(rgb, (0, 0)) == pytest.approx(expected_corner, abs=2)
    assert pixel(rgb, (3, 1)) == pytest.approx(expected_other, abs=2)


@pytest.mark.parametrize("name", ["P-transparency", "LA", "RGBA-transparent", "L", "1"])
def test_modes_survive_png_round_trip(name: str) -> None:
    make, expected_corner, _ = MODE_CASES[name]
    rgb = load_image(encode(make(), "PNG"))
    assert rgb.mode == "RGB"
    assert pixel(rgb) == expected_corner


def test_cmyk_jpeg_is_converted() -> None:
    source = cmyk_jpeg()
    assert source.mode == "CMYK"
    rgb = load_image(source)
    assert pixel(rgb, (4, 4)) == pytest.approx(RED, abs=8)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
def test_high_bit_depth_grey_is_stretched(mode: str) -> None:
    ramp = np.linspace(0, 4000, 64 * 8).reshape(8, 64)
    array = ramp.astype({"I;16": "<u2", "I;16B": ">u2", "I": "<i4", "F": "<f4"}[mode])
    image = Image.frombytes(mode, (64, 8), array.tobytes())
    assert image.mode == mode
    values = np.asarray(to_rgb(image))[..., 0]
    assert values.min() <= 1 and values.max() >= 254  # not all white: the whole range is used
    assert 100 < values.mean() < 155


def test_sixteen_bit_png_is_not_all_white() -> None:
    ramp = np.linspace(0, 4000, 32 * 32).reshape(32, 32).astype(np.uint16)
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    values = np.asarray(load_image(data))[..., 0]
    assert values.min() <= 1 and values.max() >= 254
    assert 100 < values.mean() < 155


# --- formats and inputs -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_every_allowed_format_loads(fmt: str) -> None:
    source = Image.new("RGB", (40, 24), RED)
    extra = {"lossless": True} if fmt == "WEBP" else {}
    rgb = load_image(encode(source, fmt, **extra))
    assert rgb.mode == "RGB"
    assert rgb.size == (40, 24)
    assert pixel(rgb, (20, 12)) == pytest.approx(RED, abs=6)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (GREEN, RED, BLUE)]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert pixel(load_image(data), (8, 8)) == pytest.approx(GREEN, abs=4)


def test_exif_orientation_is_applied() -> None:
    source = Image.new("RGB", (60, 20), RED)
    source.paste(BLUE, (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the viewer rotates 90° clockwise
    rgb = load_image(encode(source, "JPEG", exif=exif, quality=95))
    assert rgb.size == (20, 60)
    assert pixel(rgb, (10, 3)) == pytest.approx(BLUE, abs=10)  # left strip is now on top
    assert pixel(rgb, (10, 50)) == pytest.approx(RED, abs=10)


def test_broken_exif_is_ignored() -> None:
    data = encode(Image.new("RGB", (30, 10), GREEN), "JPEG", exif=b"Exif\x00\x00MM\x00*\xff\xff\xff\xff")
    rgb = load_image(data)
    assert rgb.size == (30, 10)
    assert pixel(rgb, (15, 5)) == pytest.approx(GREEN, abs=6)


def test_exif_that_makes_pillow_raise_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_exif_transpose(image: Image.Image) -> Image.Image:
        raise SyntaxError("not a TIFF file")  # what Pillow raises for some damaged EXIF blocks

    monkeypatch.setattr(images.ImageOps, "exif_transpose", broken_exif_transpose)
    rgb = load_image(encode(Image.new("RGB", (30, 10), GREEN), "PNG"))
    assert rgb.size == (30, 10)
    assert pixel(rgb, (15, 5)) == GREEN


@pytest.mark.parametrize("size", [(1, 1), (4000, 10), (10, 4000)])
def test_tiny_and_thin_images(size: tuple[int, int]) -> None:
    rgb = load_image(encode(Image.new("L", size, 200), "PNG"))
    assert rgb.size == size
    assert pixel(rgb, (size[0] - 1, size[1] - 1)) == (200, 200, 200)


def test_large_allowed_photo_loads() -> None:
    rgb = load_image(encode(Image.new("RGB", (6000, 4000), BLUE), "JPEG"))
    assert rgb.size == (6000, 4000)


@pytest.mark.parametrize(
    "kind", ["bytes", "bytearray", "str-path", "pathlib", "file-like", "open-file", "pil"]
)
def test_input_kinds(kind: str, tmp_path: Path) -> None:
    source_image = Image.new("RGBA", (12, 7), (*RED, 255))
    data = encode(source_image, "PNG")
    path = tmp_path / "image.png"
    path.write_bytes(data)
    if kind == "open-file":
        with path.open("rb") as file:
            rgb = load_image(file)
    else:
        source = {
            "bytes": data,
            "bytearray": bytearray(data),
            "str-path": str(path),
            "pathlib": path,
            "file-like": io.BytesIO(data),
            "pil": source_image,
        }[kind]
        rgb = load_image(source)  # type: ignore[arg-type]
    assert rgb.mode == "RGB"
    assert rgb.size == (12, 7)
    assert pixel(rgb, (6, 3)) == RED


def test_result_is_fresh_and_loaded(tmp_path: Path) -> None:
    path = tmp_path / "image.gif"
    path.write_bytes(encode(Image.new("RGB", (8, 8), GREEN), "GIF"))
    rgb = load_image(path)
    assert getattr(rgb, "fp", None) is None  # no open file behind it
    path.unlink()  # works on every OS only because nothing holds the file
    assert pixel(rgb, (1, 1)) == GREEN
    source = Image.new("RGB", (3, 3), RED)
    assert load_image(source) is not source


# --- phone photos: JPEGs decoded at a reduced scale --------------------------------------------

PHONE = (8000, 6000)  # 48 megapixels: over MAX_PIXELS at full size
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phone_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 8000×6000 JPEG (quality 85, a few MB) taken with the phone turned: EXIF orientation 6.
    As stored, red fills the top-left corner and blue the bottom-right; smooth colours elsewhere."""
    small = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    photo = Image.fromarray(small).resize(PHONE, Image.Resampling.BILINEAR)
    photo.paste(RED, (0, 0, 2000, 1500))
    photo.paste(BLUE, (6000, 4500, 8000, 6000))
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer rotates 90° clockwise: a portrait photo
    path = tmp_path_factory.mktemp("phone") / "photo.jpg"
    photo.save(path, quality=85, exif=exif)
    assert path.stat().st_size < MAX_FILE_BYTES
    return path


def test_phone_photo_loads_upright_at_reduced_scale(phone_photo: Path) -> None:
    rgb = load_image(phone_photo, min_size=64)  # the embedded models' size: 1/8 is plenty
    assert rgb.size == (750, 1000)  # 6000×8000 / 8, portrait: the orientation is applied
    assert pixel(rgb, (700, 40)) == pytest.approx(RED, abs=12)  # stored top-left -> top-right
    assert pixel(rgb, (40, 960)) == pytest.approx(BLUE, abs=12)  # stored bottom-right -> bottom-left
    # The shorter side never drops below what the caller needs ...
    assert load_image(phone_photo, min_size=1000).size == (1500, 2000)  # 1/4: 750 would be too small
    # ... and without a size, only as far as the pixel cap asks (1/2: 12 megapixels).
    assert load_image(phone_photo).size == (3000, 4000)


MEASURE_PEAK = """
import json, resource, sys
from reptok.images import load_image
unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = load_image(sys.argv[1], min_size=int(sys.argv[2]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"size": image.size, "peak_mb": (peak - before) * unit / 2**20}))
"""


def test_phone_photo_decodes_in_little_memory(phone_photo: Path) -> None:
    # Pillow's pixel buffers live outside the Python heap (tracemalloc misses them), so this measures
    # the peak resident memory of a fresh process around the one call.
    run = subprocess.run(
        [sys.executable, "-c", MEASURE_PEAK, str(phone_photo), "256"],
        capture_output=True, text=True, cwd=ROOT, check=True, timeout=120,
    )  # fmt: skip
    result = json.loads(run.stdout)
    assert result["size"] == [750, 1000]
    full_decode_mb = PHONE[0] * PHONE[1] * 3 / 2**20  # 137 MiB of RGB pixels, before any copy
    assert result["peak_mb"] < full_decode_mb / 4, result  # measured: ~12 MiB (the file itself, 2.6)


def test_phone_sized_png_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.new("RGB", PHONE, GREEN).save(path, compress_level=1)  # a real 48-megapixel PNG, ~150 KB
    err = refuse(path, "The image is too large to decode (8000×6000 pixels)", min_size=64)
    assert str(err).endswith("the limit is 40 megapixels.")


def test_jpeg_over_the_cap_even_at_one_eighth_is_refused(phone_photo: Path) -> None:
    # 1/8 of 8000×6000 is 750 000 pixels: over a 500 000 cap, so no scale fits.
    refuse(phone_photo, "The image is too large to decode (8000×6000 pixels)", max_pixels=500_000, min_size=1)
    assert load_image(phone_photo, max_pixels=750_000, min_size=1).size == (750, 1000)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP", "BMP", "JPEG"])
def test_reduced_decoding_is_for_jpeg_only(fmt: str) -> None:
    """Over the cap, every format but JPEG is refused; a JPEG decodes at the scale that fits."""
    data = encode(Image.new("RGB", (100, 100), RED), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    if fmt == "JPEG":
        rgb = load_image(data, max_pixels=9999, min_size=8)
        assert rgb.size == (13, 13)  # 1/8 (the smallest still ≥ 8 pixels); each side rounded up
        assert pixel(rgb, (6, 6)) == pytest.approx(RED, abs=8)
    else:
        refuse(data, "The image is too large to decode (100×100 pixels)", max_pixels=9999, min_size=8)


# --- bad input --------------------------------------------------------------------------------


def refuse(source: object, fragment: str, **kwargs: int) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as caught:
        load_image(source, **kwargs)  # type: ignore[arg-type]
    assert fragment in str(caught.value)
    return caught.value


def test_random_bytes_are_not_an_image() -> None:
    refuse(np.random.default_rng(1).bytes(5000), "This file is not an image")


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("just some text, pretending to be a PNG\n" * 20)
    refuse(path, "This file is not an image")


def test_empty_bytes_and_empty_file(tmp_path: Path) -> None:
    refuse(b"", "The file is empty.")
    path = tmp_path / "empty.jpg"
    path.touch()
    refuse(path, "The file is empty.")
    refuse(io.BytesIO(b""), "The file is empty.")


def test_truncated_png_raises() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = noise_png()
    err = refuse(data[: len(data) // 2], "The image file is truncated or corrupted.")
    assert err.__cause__ is not None  # chained to the Pillow error, for the log


@pytest.mark.parametrize("fmt", ["JPEG", "GIF", "BMP", "WEBP"])
def test_truncated_other_formats_raise(fmt: str) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), fmt)
    refuse(data[: len(data) // 2], "truncated or corrupted")


def test_corrupted_png_checksum_raises() -> None:
    data = bytearray(noise_png())
    data[60] ^= 0xFF  # inside the first IDAT chunk: the CRC no longer matches
    refuse(bytes(data), "truncated or corrupted")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_damaged_header_is_corrupt_not_unknown(fmt: str) -> None:
    # Cut inside the header: Pillow cannot even identify it, but the signature says what it was.
    refuse(encode(Image.new("RGB", (16, 16), RED), fmt)[:14], "truncated or corrupted")


def test_too_large_file(tmp_path: Path) -> None:
    data = noise_png()
    limit = len(data) - 1
    refuse(data, "The file is too large", max_bytes=limit)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    refuse(path, "The file is too large", max_bytes=limit)
    refuse(io.BytesIO(data), "The file is too large", max_bytes=limit)
    assert load_image(data, max_bytes=len(data)).size == (64, 48)


def test_too_large_message_is_readable() -> None:
    err = refuse(
        b"\0" * (3 * 1024 * 1024 + 200_000), "(3.2 MB); the limit is 2 MB.", max_bytes=2 * 1024 * 1024
    )
    assert str(err) == "The file is too large (3.2 MB); the limit is 2 MB."


def test_decompression_bomb_header_is_refused_before_decoding() -> None:
    # 8000×8000 = 64 Mpx: over our 40 Mpx limit, under Pillow's own warning threshold,
    # so this is our header check; the 16×16 of real pixel data is never reached.
    bomb = with_png_size(encode(Image.new("RGB", (16, 16)), "PNG"), 8000, 8000)
    err = refuse(bomb, "The image is too large to decode (8000×8000 pixels)")
    assert "the limit is 40 megapixels" in str(err)


def test_huge_decompression_bomb_caught_from_pillow() -> None:
    # 50000×50000 trips Pillow's own DecompressionBombError inside Image.open.
    bomb = with_png_size(encode(Image.new("RGB", (16, 16)), "PNG"), 50000, 50000)
    refuse(bomb, "The image is too large to decode")
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS > MAX_PIXELS  # left untouched


def test_small_max_pixels_on_normal_image() -> None:
    data = encode(Image.new("RGB", (100, 100), RED), "PNG")
    refuse(
        data, "The image is too large to decode (100×100 pixels); the limit is 9999 pixels", max_pixels=9999
    )
    refuse(Image.new("RGB", (100, 100)), "too large to decode", max_pixels=9999)
    assert load_image(data, max_pixels=10_000).size == (100, 100)


@pytest.mark.parametrize("fmt, name", [("TIFF", "TIFF"), ("ICO", "ICO"), ("PDF", "PDF")])
def test_unsupported_formats_are_refused(fmt: str, name: str) -> None:
    data = encode(Image.new("RGB", (16, 16), RED), fmt)
    err = refuse(data, f"Unsupported image format '{name}'.")
    assert str(err).endswith("Use PNG, JPEG, WebP, GIF or BMP.")


def test_missing_path_and_folder(tmp_path: Path) -> None:
    refuse(tmp_path / "nope.png", "No such file:")
    refuse(str(tmp_path / "nope.png"), "nope.png")
    refuse(tmp_path, "folder")


def test_text_mode_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(encode(Image.new("RGB", (4, 4)), "PNG"))
    with path.open("r", encoding="latin-1") as file:
        refuse(file, "binary mode")


def test_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        load_image(42)  # type: ignore[arg-type]
