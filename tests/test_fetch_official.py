"""reptok.download / `python -m reptok fetch-official` against an HTTP server of the test's own.

The server (http.server on 127.0.0.1, in a thread) serves a tiny checkpoint in the official
layout (tests.test_official's random weights), and can cut the first response after N bytes,
ignore Range, announce more bytes than it has, or serve a corrupted copy.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from reptok import official
from reptok.__main__ import main
from reptok.download import DownloadError, download_file, ensure_official
from reptok.pipeline import RepTok
from tests.helpers import TINY_VAE_CONFIG
from tests.test_official import official_state, write_checkpoint

NAME = "reptok-xl-600k-ImageNet.ckpt"


class Server:
    """What the handler serves, how it misbehaves, and the Range header of every request."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.drop_after: int | None = None  # cut the first response after this many body bytes
        self.drop_every_time = False
        self.ignore_range = False
        self.announce: int | None = None  # Content-Length / total it claims (default: the truth)
        self.status = 200
        self.ranges: list[str | None] = []
        self.url = ""


class Handler(BaseHTTPRequestHandler):
    server_state: Server  # set on a subclass per server

    def do_GET(self) -> None:
        s = self.server_state
        s.ranges.append(self.headers.get("Range"))
        if s.status != 200:
            self.send_error(s.status)
            return
        total = s.announce or len(s.data)
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not s.ignore_range:
            start = int(match[1])
            if start >= len(s.data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        else:
            start = 0
            self.send_response(200)
        self.send_header("Content-Length", str(total - start))
        self.end_headers()
        body = s.data[start:]
        if s.drop_after is not None and (len(s.ranges) == 1 or s.drop_every_time):
            body = body[: s.drop_after]  # then the connection closes (HTTP/1.0): a cut download
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = write_checkpoint(tmp_path_factory.mktemp("ckpt") / NAME, official_state())
    return path.read_bytes()


@pytest.fixture
def server(checkpoint_bytes: bytes) -> Iterator[Server]:
    state = Server(checkpoint_bytes)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (Handler,), {"server_state": state}))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/files/{NAME}"
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def no_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    def convert(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bad file must never reach the converter")

    monkeypatch.setattr(official, "convert_official", convert)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_cut_download_resumes_with_range_and_converts(server: Server, tmp_path: Path) -> None:
    """(a) The first response stops after a third of the file: the next request asks for the rest."""
    cut = len(server.data) // 3
    server.drop_after = cut
    seen: list[tuple[str, int, int | None]] = []
    out = tmp_path / "models" / "reptok-xl-tiny"
    result = ensure_official(
        out, url=server.url, vae="checkpoint", vae_config=TINY_VAE_CONFIG, dtype=torch.float32,
        progress=lambda stage, done, total: seen.append((stage, done, total)), backoff=0,
    )  # fmt: skip
    assert result == out and (out / "config.json").is_file()
    assert server.ranges == [None, f"bytes={cut}-"]
    downloads = [(done, total) for stage, done, total in seen if stage == "download"]
    assert downloads[0] == (0, len(server.data)) and downloads[-1] == (len(server.data), len(server.data))
    assert (cut, len(server.data)) in downloads  # the resumed response starts where the first one stopped
    assert [stage for stage, _, _ in seen if stage != "download"] == ["verify", "convert"]
    # the downloaded file is deleted after the conversion; no .part, no temporary folder, no lock left
    assert leftovers(out.parent) == [".reptok-xl-tiny.lock", "reptok-xl-tiny"]
    model = RepTok.from_pretrained(out)
    assert model.class_generator.config.num_classes == 1000 and model.config.info["name"] == "reptok-xl-tiny"
    # a second call returns the folder without a request
    assert ensure_official(out, url=server.url) == out and len(server.ranges) == 2


def test_a_second_start_makes_no_request(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """(c) The CLI: the first run downloads and converts (the SD-VAE named, as by default), the
    second finds the folder and asks the server nothing."""
    out = tmp_path / "reptok-xl"
    assert main(["fetch-official", "--out", str(out), "--url", server.url, "--keep-checkpoint"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["image_space"]["vae"] == official.SD_VAE
    assert (tmp_path / NAME).read_bytes() == server.data  # kept, as asked
    assert len(server.ranges) == 1
    assert main(["fetch-official", "--out", str(out), "--url", server.url]) == 0
    assert "already there" in capsys.readouterr().out
    assert ensure_official(out, url="http://127.0.0.1:9/nothing-listens-here") == out
    assert len(server.ranges) == 1


def test_server_with_fewer_bytes_than_announced(server: Server, tmp_path: Path, no_conversion: None) -> None:
    """(b) Content-Length promises 1000 bytes more than the server has: after the short answer,
    the resume gets 416, and the error says the server's file is truncated."""
    server.announce = len(server.data) + 1000
    out = tmp_path / "reptok-xl"
    with pytest.raises(DownloadError, match=r"ends after \d+ of the \d+ bytes it announced.*truncated"):
        ensure_official(out, url=server.url, progress=False, backoff=0)
    assert server.ranges == [None, f"bytes={len(server.data)}-"]
    assert not out.exists() and leftovers(tmp_path) == [".reptok-xl.lock", NAME + ".part"]  # kept to resume


def test_recorded_size_mismatch(server: Server, tmp_path: Path, no_conversion: None) -> None:
    """(b) A recorded size (CHECKPOINT_SIZE, once someone records it) that the server's differs from."""
    with pytest.raises(DownloadError, match=rf"offers {len(server.data)} bytes, the recorded size says"):
        ensure_official(tmp_path / "xl", url=server.url, expected_size=len(server.data) + 1, progress=False)
    assert not (tmp_path / "xl").exists() and len(server.ranges) == 1


@pytest.mark.parametrize("damage", ["flipped byte", "truncated file"])
def test_corrupt_or_truncated_file_is_never_converted(
    damage: str, server: Server, tmp_path: Path, no_conversion: None
) -> None:
    """(b) The server's copy itself is damaged (its Content-Length matches what it sends): the zip
    directory or a CRC check refuses it, the file is deleted, nothing is converted."""
    data = bytearray(server.data)
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
        message = "is corrupt: .* fails its CRC check.*deleted, run again"
    else:
        del data[len(data) * 2 // 3 :]
        message = "not a complete torch checkpoint.*truncated"
    server.data = bytes(data)
    with pytest.raises(DownloadError, match=message):
        ensure_official(tmp_path / "xl", url=server.url, progress=False)
    assert leftovers(tmp_path) == [".xl.lock"]


def test_recorded_sha256_mismatch(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / NAME
    with pytest.raises(DownloadError, match=r"sha256 .* differs from the recorded 0000"):
        download_file(server.url, dest, sha256="0" * 64, progress=False)
    assert leftovers(tmp_path) == []
    right = hashlib.sha256(server.data).hexdigest()
    assert download_file(server.url, dest, sha256=right, progress=False).read_bytes() == server.data
    # a file already there is checked, not fetched again
    assert download_file(server.url, dest, sha256=right, progress=False) == dest and len(server.ranges) == 2
    with pytest.raises(DownloadError, match="sha256 differs"):
        download_file(server.url, dest, sha256="0" * 64, progress=False)
    with pytest.raises(DownloadError, match="the recorded size is 1"):
        download_file(server.url, dest, expected_size=1, progress=False)
    assert len(server.ranges) == 2 and dest.is_file()  # never deleted: it may be someone's own copy


def test_server_that_ignores_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    server.drop_after, server.ignore_range = 1000, True
    dest = download_file(server.url, tmp_path / NAME, progress=False, backoff=0)
    assert server.ranges == [None, "bytes=1000-"] and dest.read_bytes() == server.data


def test_gives_up_when_retries_bring_nothing(server: Server, tmp_path: Path) -> None:
    server.drop_after, server.ignore_range, server.drop_every_time = 1000, True, True
    with pytest.raises(DownloadError, match=r"stopped at 1000 of \d+ bytes .*run again to resume"):
        download_file(server.url, tmp_path / NAME, progress=False, retries=2, backoff=0)
    assert len(server.ranges) == 4  # the first answer, then 3 attempts without a new byte
    server.status = 404
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url, tmp_path / "other.ckpt", progress=False)


def test_an_unrelated_folder_is_not_overwritten(server: Server, tmp_path: Path) -> None:
    (tmp_path / "xl").mkdir()
    (tmp_path / "xl" / "notes.txt").write_text("mine")
    with pytest.raises(DownloadError, match=r"holds no config\.json"):
        ensure_official(tmp_path / "xl", url=server.url, progress=False)
    assert not server.ranges
