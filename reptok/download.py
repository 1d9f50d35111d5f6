"""The official RepTok-XL in one step: download (resumable, verified), convert once, cache.

    python -m reptok fetch-official --out ~/reptok-models/reptok-xl-imagenet256

    from reptok.download import ensure_official
    folder = ensure_official("~/reptok-models/reptok-xl-imagenet256")  # a no-op once the folder is there
    model = RepTok.from_pretrained(folder)

`download_file` fetches a large file over HTTP(S) with the standard library: into `<file>.part`,
resumed with a Range request after a cut connection (a server that ignores Range and answers 200
is read from the start again), its size checked against Content-Length and a recorded size, its
sha256 against a recorded one, and renamed to `<file>` only then. `ensure_official` checks the
checkpoint's zip directory and every member's CRC (a corrupt or truncated file is refused before
anything reads it), converts it with `reptok.official.convert_official` into a temporary folder
and renames that into place when it is complete: the model folder either does not exist or is
whole. A second call with the folder present returns it without a request.

An app calls `ensure_official` in a background thread with `progress=fn(stage, done, total)`
(stages "download", "verify", "convert") for its status line, keeps serving other models while it
runs, and shows a `DownloadError`'s message (it says what went wrong and what to do) if it fails.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch

# (stage, done, total): "download" with bytes done / total (None while unknown) after each chunk;
# "verify" and "convert" once, as (stage, 0, None), when they start. For an app's status line.
ProgressFn = Callable[[str, int, int | None], None]

OFFICIAL_NAME = "reptok-xl-imagenet256"  # the folder name the README and the app use
MODELS_ENV = "REPTOK_MODELS_DIR"  # where the app looks for more models (app_parts.registry)


class DownloadError(RuntimeError):
    """A download or a downloaded file that cannot be used; the message says what to do."""


# ------------------------------------------------------------------------------ one HTTP file


class _Progress:
    """A tqdm bar (progress=True), a callback, or nothing."""

    def __init__(self, progress: bool | ProgressFn, name: str) -> None:
        self.callback = progress if callable(progress) else None
        self.show, self.name, self.bar = progress is True, name, None

    def bytes(self, done: int, total: int | None) -> None:
        if self.callback is not None:
            self.callback("download", done, total)
        if self.show:
            if self.bar is None or self.bar.total != total:
                from tqdm.auto import tqdm

                self.close()
                self.bar = tqdm(
                    total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc=self.name
                )
            self.bar.update(done - self.bar.n)

    def stage(self, stage: str, message: str) -> None:
        self.close()
        if self.callback is not None:
            self.callback(stage, 0, None)
        if self.show:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _content_range(response: Any) -> tuple[int, int | None]:
    """206's "Content-Range: bytes START-END/TOTAL" -> (START, TOTAL or None for "*")."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (response.headers.get("Content-Range") or "").strip())
    if match is None:
        raise DownloadError(
            f"the server answered 206 with an unreadable Content-Range: {response.headers.get('Content-Range')!r}"
        )
    return int(match[1]), None if match[2] == "*" else int(match[2])


def file_sha256(path: Path, chunk_size: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: bool | ProgressFn = True,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download `url` to `dest` (see the module docstring); an existing `dest` is checked against
    `expected_size` and `sha256` (when given) and returned, without a request.

    `retries`: attempts in a row that bring no new byte before it gives up (an attempt that does
    resets the count), waiting `backoff`·2^k seconds between them. The `.part` file stays for the
    next call to resume, except after a sha256 mismatch (it is deleted: resuming cannot mend it)."""
    dest = Path(dest).expanduser()
    part = dest.with_name(dest.name + ".part")
    if dest.is_file():  # a finished download (or a file put there by hand): checked, not fetched
        if expected_size is not None and dest.stat().st_size != expected_size:
            raise DownloadError(
                f"{dest} holds {dest.stat().st_size} bytes, the recorded size is {expected_size}"
            )
        if sha256 is not None and file_sha256(dest) != sha256.lower():
            raise DownloadError(f"{dest}: its sha256 differs from the recorded {sha256}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    report = _Progress(progress, dest.name)
    total, failures, last_error = expected_size, 0, ""
    headers = {"User-Agent": "reptok (python urllib)", "Accept-Encoding": "identity"}
    try:
        while True:
            have = part.stat().st_size if part.exists() else 0
            if total is not None and have >= total:
                break
            request = urllib.request.Request(
                url, headers=headers | ({"Range": f"bytes={have}-"} if have else {})
            )
            finished = False
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    length = int(length) if length is not None and length.isdigit() else None
                    if response.status == 206:
                        start, offered = _content_range(response)
                        if start != have:
                            raise DownloadError(
                                f"asked {url} for bytes from {have}, the server sent them from {start}"
                            )
                        if offered is None and length is not None:  # "bytes 100-999/*"
                            offered = have + length
                    else:  # 200: the whole file (a server that ignores Range sends it again from byte 0)
                        start, offered = 0, length
                    if offered is not None:
                        if total is not None and offered != total:
                            what = "the recorded size" if expected_size is not None else "its earlier answer"
                            raise DownloadError(
                                f"{url} offers {offered} bytes, {what} says {total}: not the expected file"
                            )
                        total = offered
                    with open(part, "r+b" if start else "wb") as f:
                        f.seek(start)
                        f.truncate()
                        done = start
                        report.bytes(done, total)
                        while chunk := response.read(chunk_size):
                            f.write(chunk)
                            done += len(chunk)
                            report.bytes(done, total)
                    finished = True
            except urllib.error.HTTPError as err:
                if err.code == 416 and have:  # nothing after `have`: the server's file ends there
                    if total is None:
                        break
                    raise DownloadError(
                        f"{url} ends after {have} of the {total} bytes it announced (HTTP 416 on resume): "
                        f"the file on the server is truncated; {part} is kept"
                    ) from err
                if err.code not in (408, 425, 429) and err.code < 500:
                    raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
                last_error = f"HTTP {err.code} {err.reason}"
            except (OSError, http.client.HTTPException) as err:  # cut connection, timeout, reset, DNS
                last_error = f"{type(err).__name__}: {err}"
            now = part.stat().st_size if part.exists() else 0
            if (total is not None and now >= total) or (total is None and finished):
                break
            if finished:
                last_error = f"the connection closed after {now} of {total} bytes"
            failures = 0 if now > have else failures + 1
            if failures > retries:
                raise DownloadError(
                    f"downloading {url} stopped at {now} of {total if total is not None else '?'} bytes "
                    f"({last_error}), {retries} retries brought nothing more; run again"
                    + (f" to resume from {part}" if now else "")
                )
            time.sleep(min(backoff * 2 ** max(failures - 1, 0), 30.0))
    finally:
        report.close()
    size = part.stat().st_size if part.exists() else 0
    if total is not None and size != total:
        raise DownloadError(f"{part} holds {size} bytes, {url} announced {total}; run again to resume")
    if sha256 is not None:
        report.stage("verify", f"checking the sha256 of {dest.name} ...")
        actual = file_sha256(part)
        if actual != sha256.lower():
            part.unlink()
            raise DownloadError(
                f"{url}: sha256 {actual} differs from the recorded {sha256}; the file was deleted"
            )
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------- the official model


def check_checkpoint(path: Path) -> None:
    """A torch checkpoint is a zip archive: its directory sits at the end (a truncated file has
    none) and every member carries a CRC-32 (a corrupted byte fails it). Reads the whole file."""
    if not zipfile.is_zipfile(path):
        raise DownloadError(
            f"{path} is not a complete torch checkpoint (no zip directory at its end: truncated?)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DownloadError(f"{path} is corrupt: {err}") from err
    if bad is not None:
        raise DownloadError(f"{path} is corrupt: {bad!r} inside it fails its CRC check")


def default_official_dir() -> Path:
    """$REPTOK_MODELS_DIR/reptok-xl-imagenet256 (its first folder), else checkpoints/ of this repo
    (git-ignored: the converted model is a few GB, too large for assets/)."""
    folders = [p for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p.strip()]
    root = Path(folders[0]).expanduser() if folders else Path(__file__).resolve().parents[1] / "checkpoints"
    return root / OFFICIAL_NAME


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` between processes (two app workers fetch once); none on Windows."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_official(
    out_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    expected_size: int | None = None,
    sha256: str | None = None,
    vae: Literal["hub", "checkpoint"] = "hub",
    vae_config: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
    keep_checkpoint: bool = False,
    progress: bool | ProgressFn = True,
    **download_kwargs: Any,
) -> Path:
    """The converted official RepTok-XL folder at `out_dir` (default `default_official_dir()`),
    downloaded and converted on the first call; later calls return it at once, without a request.

    url / expected_size / sha256 default to reptok.official's CHECKPOINT_URL / CHECKPOINT_SIZE /
    CHECKPOINT_SHA256 (size and hash are None until someone records them; Content-Length and the
    zip CRCs are checked regardless). `checkpoint`: where the .ckpt goes (default: next to
    out_dir, named as in the URL); a file already there is used, not downloaded. The downloaded
    file is deleted after the conversion unless `keep_checkpoint`; a file that was already at a
    `checkpoint` you pass is never deleted. `vae`, `vae_config`, `dtype`: as for `convert_official` ("hub": the SD-VAE comes
    through diffusers on first load). `progress`: True for a tqdm bar, a `ProgressFn`, or False.
    Raises DownloadError with a message that says what to do; nothing half-written is left at
    out_dir."""
    from reptok import official

    out = Path(out_dir).expanduser() if out_dir is not None else default_official_dir()
    if (out / "config.json").is_file():
        return out
    url = url or official.CHECKPOINT_URL
    expected_size = expected_size if expected_size is not None else official.CHECKPOINT_SIZE
    sha256 = sha256 if sha256 is not None else official.CHECKPOINT_SHA256
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.parent / f".{out.name}.lock"):
        if (out / "config.json").is_file():  # another process finished it while this one waited
            return out
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise DownloadError(
                f"{out} exists but holds no config.json; move it away (refusing to overwrite it)"
            )
        for stale in out.parent.glob(f".{out.name}.partial-*"):  # a conversion killed half-way
            shutil.rmtree(stale, ignore_errors=True)
        ours = checkpoint is None  # a file at our default place is ours to delete
        ckpt = Path(checkpoint).expanduser() if checkpoint else out.parent / Path(urlparse(url).path).name
        downloaded = not ckpt.is_file()
        ckpt = download_file(
            url, ckpt, expected_size=expected_size, sha256=sha256, progress=progress, **download_kwargs
        )
        report = _Progress(progress, ckpt.name)
        report.stage("verify", f"checking {ckpt} ...")
        try:
            check_checkpoint(ckpt)
        except DownloadError as err:
            if ours or downloaded:
                ckpt.unlink()
                raise DownloadError(f"{err}; it was deleted, run again to download it anew") from err
            raise
        report.stage("convert", f"converting {ckpt.name} into {out} ...")
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            # Converted under its final name (convert_official records it), then moved into place.
            official.convert_official(ckpt, tmp / out.name, vae=vae, vae_config=vae_config, dtype=dtype)
            if out.is_dir():
                out.rmdir()  # empty (checked above)
            os.replace(tmp / out.name, out)
        except (ValueError, RuntimeError) as err:
            raise DownloadError(f"{ckpt} could not be converted: {err}") from err
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if (ours or downloaded) and not keep_checkpoint:
            ckpt.unlink()
    return out
