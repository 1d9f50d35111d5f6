"""Safe image loading: the one place where user files are opened.

Everything a person uploads is untrusted. The rules here are: read at most
``max_bytes`` before Pillow sees anything, let Pillow try only the decoders
on the allowlist, check the pixel count from the header before decoding
pixels, and turn every failure into an :class:`ImageLoadError` whose text a
person understands. The result is always a fresh 8-bit RGB image with
transparency composited over white (the embedded training data, emoji, is
composited the same way).

Phone photos are JPEGs of 12 to 50 megapixels, and the models need a few
hundred pixels. A JPEG is decoded at a reduced scale (libjpeg's DCT scaling,
Pillow's draft mode; see :func:`_draft_jpeg`) and the pixel cap applies to the
size actually decoded. A baseline 48-megapixel photo then takes ~10 MB and a
few tens of milliseconds instead of 144 MB. A progressive JPEG still buffers
its DCT coefficients at full size (~3 bytes a pixel at 4:2:0); Pillow's own
open-time limit (``Image.MAX_IMAGE_PIXELS``, ~89 megapixels, an error here)
bounds that.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageOps, JpegImagePlugin, UnidentifiedImageError

MAX_FILE_BYTES: int = 20 * 1024 * 1024
MAX_PIXELS: int = 40_000_000
ALLOWED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})
# libjpeg decodes at 1/1, 1/2, 1/4 or 1/8 scale by scaling its inverse DCT (Pillow's draft mode):
# the full-size pixels are never made, so time and memory follow the reduced size.
_JPEG_SCALES: tuple[int, ...] = (1, 2, 4, 8)

_MB = 1024 * 1024
_FORMATS_HINT = "Use PNG, JPEG, WebP, GIF or BMP."
_CORRUPT = "The image file is truncated or corrupted."
_NOT_AN_IMAGE = "This file is not an image (or not one we can read)."

# Magic bytes of formats people commonly upload but we refuse. Sniffing them
# ourselves lets the error name the format without letting Pillow run those
# decoders at all.
_REFUSED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"%PDF", "PDF"),
    (b"%!PS", "EPS"),
    (b"8BPS", "PSD"),
    (b"icns", "ICNS"),
    (b"DDS ", "DDS"),
    (b"qoif", "QOI"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)

# Headers of the allowed formats: a file that starts like one but will not open is
# a damaged image, not "not an image".
_ALLOWED_SIGNATURES: tuple[bytes, ...] = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


class ImageLoadError(ValueError):
    """An image could not be loaded; ``str(err)`` is a message for a person."""


def load_image(
    source: str | os.PathLike[str] | bytes | BinaryIO | Image.Image,
    *,
    max_bytes: int = MAX_FILE_BYTES,
    max_pixels: int = MAX_PIXELS,
    min_size: int | None = None,
) -> Image.Image:
    """Open an untrusted image and return it as an 8-bit RGB PIL image (loaded, file closed).

    ``source`` is a path, the file's bytes, a binary file-like object (read,
    not closed: the caller owns it) or a PIL image (only converted). GIF and
    WebP animations give their first frame; EXIF orientation is applied.

    ``min_size`` is the side the caller needs (a model's input size: it takes a
    central square of the shorter side). A JPEG is then decoded at the smallest
    scale whose shorter side is still at least ``min_size``, so a 48-megapixel
    phone photo costs a few megabytes, not 144. Whatever ``min_size`` is, a JPEG
    over ``max_pixels`` is decoded at the scale that fits, if one does; other
    formats have no reduced decoding and are held to ``max_pixels`` as they are.
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels)
        return to_rgb(source)
    data = _read_capped(source, max_bytes)
    if not data:
        raise ImageLoadError("The file is empty.")
    return _decode(data, max_pixels, min_size)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to a new 8-bit RGB image.

    Transparency (alpha channel, palette alpha, ``tRNS``) is composited over
    white. Integer and float images (I;16, I, F) are scaled by their actual
    value range, because a plain ``convert`` clips them and 16-bit grey would
    come out all white.
    """
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return Image.fromarray(_stretch_to_uint8(np.asarray(image))).convert("RGB")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")  # also unpremultiplies RGBa / La
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "LAB":
        # Pillow has no direct LAB -> RGB conversion; go through a colour profile.
        lab_to_srgb = ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        return ImageCms.applyTransform(image, lab_to_srgb)
    try:
        return image.convert("RGB")  # a copy even when the mode is already RGB
    except ValueError as err:
        raise ImageLoadError(f"Unsupported colour mode '{image.mode}'.") from err


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map the finite value range of a grey image linearly onto 0..255."""
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if high > low:
        scaled = (values - low) / (high - low) * 255.0
    else:
        # A flat image has no range to stretch; keep 8-bit values as they are and
        # read larger ones as 16-bit, so a flat white I;16 image stays white.
        scaled = np.full_like(values, low if low <= 255 else low / 257.0)
    return np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).round().astype(np.uint8)


def _read_capped(source: str | os.PathLike[str] | bytes | BinaryIO, max_bytes: int) -> bytes:
    """Return the whole file as bytes, refusing anything over ``max_bytes`` unread."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        data = _read_path(os.fspath(source), max_bytes)
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        if not isinstance(data, bytes):
            raise ImageLoadError("The file was opened in text mode; open it in binary mode ('rb').")
        if len(data) > max_bytes:
            raise ImageLoadError(f"The file is too large; the limit is {_size(max_bytes)}.")
    else:
        raise TypeError(
            f"load_image() takes a path, bytes, a binary file or a PIL image, not {type(source)!r}"
        )
    if len(data) > max_bytes:
        raise ImageLoadError(f"The file is too large ({_size(len(data))}); the limit is {_size(max_bytes)}.")
    return data


def _read_path(path: str, max_bytes: int) -> bytes:
    try:
        if os.path.isdir(path):
            raise ImageLoadError(f"This is a folder, not an image file: {path}")
        # stat first so that a huge file is refused without reading it.
        size = os.stat(path).st_size
        if size > max_bytes:
            raise ImageLoadError(f"The file is too large ({_size(size)}); the limit is {_size(max_bytes)}.")
        with open(path, "rb") as file:
            return file.read(max_bytes + 1)  # +1 so a file that grew since stat is still caught
    except FileNotFoundError as err:
        raise ImageLoadError(f"No such file: {path}") from err
    except OSError as err:
        raise ImageLoadError(f"The file cannot be read: {path} ({err.strerror or err})") from err


def _decode(data: bytes, max_pixels: int, min_size: int | None) -> Image.Image:
    # Warnings are process-wide state; catch_warnings keeps the "bomb warning is an
    # error" rule local instead of lowering Image.MAX_IMAGE_PIXELS for everyone.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Broken EXIF is ignored (see _apply_exif_orientation); Pillow's warning about it is noise.
        warnings.filterwarnings("ignore", r"(possibly )?corrupt exif", UserWarning)
        try:
            with Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS)) as opened:
                if isinstance(opened, JpegImagePlugin.JpegImageFile):  # also MPO, a JPEG with extras
                    _draft_jpeg(opened, min_size, max_pixels)  # sets the decoded size; header only
                _check_pixels(opened.size, max_pixels)  # header only, nothing decoded yet
                opened.load()  # first frame; raises on truncation (LOAD_TRUNCATED_IMAGES is False)
                image = _apply_exif_orientation(opened)  # on the reduced image: same orientation tag
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageLoadError(
                f"The image is too large to decode; the limit is {_pixels(max_pixels)}."
            ) from err
        except UnidentifiedImageError as err:
            refused = _sniff_refused_format(data)
            if refused is not None:
                raise ImageLoadError(f"Unsupported image format '{refused}'. {_FORMATS_HINT}") from err
            damaged = data.startswith(_ALLOWED_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
            raise ImageLoadError(_CORRUPT if damaged else _NOT_AN_IMAGE) from err
        except Exception as err:  # untrusted input: any other decoder failure means a damaged file
            raise ImageLoadError(_CORRUPT) from err
    return to_rgb(image)


def _draft_jpeg(jpeg: JpegImagePlugin.JpegImageFile, min_size: int | None, max_pixels: int) -> None:
    """Make Pillow decode ``jpeg`` at 1/scale: the largest scale whose shorter side is still at least
    ``min_size`` (none given: no reduction), and at least the smallest scale under ``max_pixels``.
    A JPEG still over the cap at 1/8 is refused here, with its full size in the message."""
    width, height = jpeg.size

    def pixels(scale: int) -> int:  # the size libjpeg decodes to: each side rounded up
        return -(-width // scale) * -(-height // scale)

    fitting = [s for s in _JPEG_SCALES if pixels(s) <= max_pixels]
    if not fitting:
        _check_pixels(jpeg.size, max_pixels)  # raises: a bomb, or more than even 1/8 can bring down
    wanted = [s for s in _JPEG_SCALES if min_size and min(width, height) // s >= min_size]
    scale = max([fitting[0], *wanted])
    if scale > 1:
        # draft picks the largest scale that keeps each side at least the requested one; asking for
        # (width // scale, height // scale) gives exactly `scale` (each ratio is in [scale, 2·scale)).
        jpeg.draft("RGB", (max(1, width // scale), max(1, height // scale)))


def _apply_exif_orientation(opened: Image.Image) -> Image.Image:
    """Return a rotated copy per EXIF orientation; broken EXIF is ignored."""
    try:
        rotated = ImageOps.exif_transpose(opened)
    except Exception:  # EXIF is optional metadata; a bad tag must not lose the image
        rotated = None
    # A copy either way: the opened image is closed when its `with` block ends.
    return rotated if rotated is not None and rotated is not opened else opened.copy()


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageLoadError(
            f"The image is too large to decode ({width}×{height} pixels); the limit is {_pixels(max_pixels)}."
        )


def _sniff_refused_format(data: bytes) -> str | None:
    for signature, name in _REFUSED_SIGNATURES:
        if data.startswith(signature):
            return name
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        return "AVIF" if brand.startswith(b"avi") else "HEIC" if brand.startswith((b"hei", b"mif1")) else None
    head = data[:512].lstrip().lower()
    return "SVG" if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head) else None


def _size(num_bytes: int) -> str:
    """'31.2 MB', '20 MB', '12 KB', '900 bytes': short and readable."""
    for unit, scale in (("MB", _MB), ("KB", 1024)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{num_bytes} bytes"


def _pixels(count: int) -> str:
    return f"{count / 1e6:g} megapixels" if count >= 1_000_000 else f"{count} pixels"
