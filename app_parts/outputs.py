"""The files the app serves: each request's images written once, atomically, in a folder of its own.

Why the handlers return paths of files they wrote, not PIL images: how Gradio serves images.
A PIL image returned by a handler is saved by `gradio.processing_utils.save_pil_to_cache` (through
`gradio.image_utils.save_image` for gr.Image, `Gallery.postprocess` for gr.Gallery). The file is
named after a hash of its encoded bytes, `<cache>/<sha256>/image.png`, and written in place with
`Path.write_bytes` (truncate, then write) on every call. Identical outputs (several people
reconstructing the same example with the same seed) land at the same path, so one request rewrites
the file while another request's client is downloading it. The download is Starlette's
`FileResponse` (`gradio.route_utils.file_fetch`): it takes Content-Length from `os.stat`, then reads
the file to its end. A file truncated or refilled in between yields fewer or more bytes than
declared; h11 raises "Too little / Too much data for declared Content-Length", uvicorn drops the
connection, and the client sees "peer closed connection without sending complete message body"
(or, when the stat caught the file empty, an empty image).

So every output is written here, once, under a temporary name renamed into place (a reader sees the
whole file or none), into a fresh folder per request inside Gradio's cache folder. Gradio serves a
file that is already in its cache as it is (`Block.move_resource_to_block_cache`), without copying it
to a hashed path; no other request ever writes the path a download reads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from gradio.utils import get_upload_folder
from PIL import Image

FOLDER = "reptok-explorer"  # the app's folder inside Gradio's cache
MAX_AGE_S = 3600.0  # request folders older than this are removed when a new one is made
Gallery = list[tuple[str, str]]  # (path of a PNG, caption), what gr.Gallery takes


def output_dir() -> Path:
    """A fresh folder for one request's files, inside Gradio's cache (GRADIO_TEMP_DIR or <tmp>/gradio)."""
    return request_dir(Path(get_upload_folder()) / FOLDER)


def request_dir(root: Path) -> Path:
    """A fresh folder under `root`; folders there older than an hour are removed first."""
    root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in root.iterdir():
        try:
            if old.is_dir() and now - old.stat().st_mtime > MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass  # another request removed it first
    path = root / uuid.uuid4().hex
    path.mkdir()
    return path


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write` on a temporary file next to `path`, then rename it to `path` in one step: a
    reader sees the whole file or none, never a part (a failed write leaves nothing behind)."""
    fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def write_pngs(images: Sequence[Image.Image], names: Sequence[str]) -> list[str]:
    """The images as `<name>.png` in a fresh request folder; their paths, as Gradio takes them."""
    folder = output_dir()
    return [
        str(write_atomically(folder / f"{name}.png", lambda file, im=im: im.save(file, format="PNG")))
        for im, name in zip(images, names, strict=True)
    ]


def gallery(images: Sequence[Image.Image], captions: Sequence[str]) -> Gallery:
    paths = write_pngs(images, [f"{i:02d}" for i in range(len(images))])
    return list(zip(paths, captions, strict=True))


def write_gif(frames: list[Image.Image], path: Path, fps: float = 8.0, scale: int = 4) -> Path:
    """A looping GIF that goes there and back (a → b → a), upscaled so small images are visible."""
    big = [f.resize((f.width * scale, f.height * scale), Image.Resampling.NEAREST) for f in frames]
    loop = big + big[-2:0:-1]
    return write_atomically(
        path,
        lambda file: loop[0].save(
            file, format="GIF", save_all=True, append_images=loop[1:], duration=int(1000 / fps), loop=0
        ),
    )
