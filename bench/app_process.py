"""The explorer as a person meets it: `python app.py` in its own process, asked over HTTP.

    result = measure_app(Path("runs/dev/s64"), AppProbe(uploads=[a, b], class_name="Objects", prompt="red apple"))

Seconds from starting the process to the first answer of /reconstruct (imports, model discovery,
Gradio start-up, the lazy model load and one reconstruction), then every endpoint once through
gradio_client, then the process's peak resident memory (Linux VmHWM: the high-water mark, so a
spike between two polls is not missed; psutil's current RSS elsewhere).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from app import MANIFOLD_ENV
from app_parts.registry import MODELS_ENV, ModelRegistry
from bench.common import ROOT


@dataclass
class AppProbe:
    """The requests sent: two uploads, a class / prompt (None where the model cannot sample), and
    the controls at the values the app's sliders start at (the model's sampling defaults)."""

    uploads: list[str]
    class_name: str | None
    prompt: str | None
    steps: int = 25
    cfg_scale: float = 1.5
    cfg_interval: tuple[float, float] = (0.3, 0.9)  # the class generator's
    text_cfg_interval: tuple[float, float] = (0.3, 0.9)
    samples: int = 16
    frames: int = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app_label(model_dir: Path) -> str:
    """The dropdown value the app gives `model_dir` (its registry also holds assets/models/)."""
    with mock.patch.dict(os.environ, {MODELS_ENV: str(model_dir)}):
        registry = ModelRegistry()
    for key, entry in registry.entries.items():
        if entry.path.resolve() == model_dir.resolve():
            return key
    raise ValueError(f"the app does not list {model_dir}: {registry.problems}")


def peak_rss(pid: int) -> tuple[int, str]:
    """(bytes, how it was measured) of a running process."""
    status = Path(f"/proc/{pid}/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "VmHWM"
    import psutil  # not Linux: the current resident set, which may miss a peak

    return int(psutil.Process(pid).memory_info().rss), "RSS after the requests"


def _connect(url: str, proc: subprocess.Popen[bytes], deadline: float, log: Path) -> Any:
    from gradio_client import Client

    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return Client(url, verbose=False)
        except Exception:  # not listening yet (connection refused, config not served yet)
            if time.perf_counter() > deadline:
                raise TimeoutError(f"app.py did not answer at {url}:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.2)


def measure_app(
    model_dir: Path, probe: AppProbe, *, manifold: Path | None = None, timeout_s: float = 300.0
) -> dict[str, Any]:
    """Start app.py with `model_dir` (and `manifold`, where it exists) on a free port, time the first
    answer, call every endpoint once."""
    from gradio_client import handle_file

    label = app_label(model_dir)
    port = free_port()
    env = os.environ | {
        MODELS_ENV: str(model_dir.resolve()),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",  # no network calls at start (there may be no network)
        "HF_HUB_OFFLINE": "1",
    }
    if manifold is not None and manifold.is_file():
        env[MANIFOLD_ENV] = str(manifold.resolve())
    a, b = (handle_file(p) for p in probe.uploads)
    with tempfile.TemporaryDirectory(prefix="reptok-app-") as scratch:
        log = Path(scratch) / "app.log"
        with log.open("wb") as out:
            start = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
            try:
                client = _connect(f"http://127.0.0.1:{port}/", proc, start + timeout_s, log)
                server_up = time.perf_counter() - start
                client.predict(a, label, probe.steps, 0, api_name="/reconstruct")
                first_answer = time.perf_counter() - start
                endpoints, skipped = _every_endpoint(client, label, probe, a, b)
                rss, source = peak_rss(proc.pid)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    print(f"  app: first answer after {first_answer:.1f} s, peak RSS {rss / 1e9:.2f} GB ({source})")
    return {
        "label": label,
        "server_up_s": server_up,
        "first_answer_s": first_answer,
        "peak_rss_bytes": rss,
        "rss_source": source,
        "endpoints_s": endpoints,
        "skipped_endpoints": skipped,
    }


def _every_endpoint(
    client: Any, label: str, probe: AppProbe, a: Any, b: Any
) -> tuple[dict[str, float], dict[str, str]]:
    """Each endpoint once with the app's default controls: seconds per call, and what was skipped."""
    steps, cfg, (lo, hi) = probe.steps, probe.cfg_scale, probe.cfg_interval
    calls: dict[str, tuple[Any, ...]] = {
        "/reconstruct": (a, label, steps, 0),
        "/variations": (a, label, steps, 0),
        "/interpolate": (a, b, label, probe.frames, "slerp", steps, 0, 0.5),
        "/manifold": (a,),  # every λ panel of the app's own assets/manifold.npz, the upload placed in each
    }
    skipped = {}
    if probe.class_name is not None:
        calls["/sample_class"] = (probe.class_name, label, cfg, lo, hi, steps, 0, probe.samples)
    else:
        skipped["/sample_class"] = "skipped: no class generator, or no class names to choose from"
    if probe.prompt is not None:
        calls["/sample_text"] = (probe.prompt, label, cfg, *probe.text_cfg_interval, steps, 0, probe.samples)
    else:
        skipped["/sample_text"] = "skipped: no text generator"
    seconds = {}
    for name, call_args in calls.items():
        start = time.perf_counter()
        client.predict(*call_args, api_name=name)
        seconds[name] = time.perf_counter() - start
    return seconds, skipped
