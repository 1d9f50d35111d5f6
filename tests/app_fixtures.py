"""Fixtures and helpers for the app's tests (test_app*.py): a tiny random model with both generators,
odd and broken uploads, a small λ manifold, and the app served on a free port for gradio_client.
tests/conftest.py hands the fixtures to every test module."""

from __future__ import annotations

import io
import socket
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from PIL import Image

from reptok.manifold import fit_2d, save_manifold
from reptok.pipeline import RepTok
from tests.helpers import CLASS_NAMES

if TYPE_CHECKING:
    from gradio_client import Client

# The app and gradio_client are imported inside the fixtures that need them: tests/conftest.py imports
# this module for every test module, and only the app's tests should pay for (or depend on) Gradio.

SIZE = 32  # the tiny model's image size
LAMBDAS = ["0", "1", "inf"]  # the test manifold's settings, in its order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def model_dir(tiny_model: RepTok, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest's tiny model (both generators), saved in a folder of this module's own, "tiny"."""
    return tiny_model.save_pretrained(tmp_path_factory.mktemp("models") / "tiny", dtype=torch.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Odd and broken uploads."""
    d = tmp_path_factory.mktemp("uploads")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    out: dict[str, Path] = {}

    def save(name: str, image: Image.Image, **kw: object) -> None:
        out[name] = d / name
        image.save(out[name], **kw)

    save("rgb.png", rgb)
    save("other.png", rgb.rotate(90))
    save("tiny1x1.png", Image.new("RGB", (1, 1), (200, 10, 10)))
    save("wide4000x10.png", Image.new("RGB", (4000, 10), (10, 200, 10)))
    save("grey16.png", Image.fromarray((rng.integers(0, 65535, (20, 20))).astype(np.uint16)))
    save("cmyk.jpg", rgb.convert("CMYK"))
    save("palette.png", rgb.convert("P"))
    save("transparent.png", Image.new("RGBA", (20, 20), (255, 0, 0, 0)))
    frames = [Image.new("P", (16, 16), c) for c in (1, 50)]
    save("animated.gif", frames[0], save_all=True, append_images=frames[1:], loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    save("rotated.jpg", rgb, exif=exif)
    out["text.png"] = d / "text.png"
    out["text.png"].write_text("this is not an image")
    out["empty.png"] = d / "empty.png"
    out["empty.png"].write_bytes(b"")
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    out["truncated.png"] = d / "truncated.png"
    out["truncated.png"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["bomb.png"] = d / "bomb.png"
    out["bomb.png"].write_bytes(_bomb_png(30_000, 30_000))
    return out


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG header announcing width×height pixels with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    idat = zlib.compress(b"\x00" * (width + 1) * 8)  # a few rows; the header is what matters
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def manifold_path(model_dir: Path, files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = RepTok.from_pretrained(model_dir)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(12)]
    tokens = model.encode(images).reshape(12, -1).numpy()
    names = [f"emoji {i}" for i in range(12)]
    cats = [CLASS_NAMES[i % 3] for i in range(12)]
    path = tmp_path_factory.mktemp("manifold") / "manifold.npz"
    from app import ModelRegistry

    key = ModelRegistry([model_dir]).default
    assert key is not None
    # Three λ settings; only "1" has a model (the tiny one): the others fall back to it, with a note.
    settings = {lam: {"xy": fit_2d(tokens, seed=i), "tokens": tokens} for i, lam in enumerate(LAMBDAS)}
    return save_manifold(path, names=names, categories=cats, settings=settings, model_tokens={key: tokens})


@pytest.fixture(scope="module")
def client(model_dir: Path, manifold_path: Path) -> Iterator[Client]:
    from gradio_client import Client

    from app import ModelRegistry, build_demo

    demo = build_demo(ModelRegistry([model_dir]), manifold_path=manifold_path)
    port = free_port()
    demo.queue().launch(prevent_thread_lock=True, server_port=port, server_name="127.0.0.1", quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def item_path(item: dict) -> str:
    """A gallery item's image path, as gradio_client returns it (a path, or a FileData dict)."""
    image = item["image"]
    return image if isinstance(image, str) else image["path"]


def error(client: Client, *args: object, api_name: str) -> str:
    with pytest.raises(Exception) as info:  # gradio_client.exceptions.AppError carries gr.Error's text
        client.predict(*args, api_name=api_name)
    return str(info.value)
