"""The official RepTok-XL at app start: fetched in the background while the embedded models serve.

    REPTOK_FETCH_OFFICIAL=1 python app.py       # a Space sets it in its settings

The folder is `reptok.download.default_official_dir()`: the first folder of $REPTOK_MODELS_DIR (then
the app finds it there at its next start, without a request), else checkpoints/ of this repository.
`OfficialFetch` runs `ensure_official` in a thread, keeps what it reports as a status line, and adds
the finished folder to the registry; `status_line` shows that line under the title and refreshes it
(and every model dropdown's choices) on a timer until the fetch has ended.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gradio as gr

from app_parts.registry import Ability, ModelRegistry
from reptok.download import OFFICIAL_NAME, DownloadError, default_official_dir, ensure_official

log = logging.getLogger("reptok.app")
FETCH_ENV = "REPTOK_FETCH_OFFICIAL"  # "1": fetch the official model at app start
TICK_S = 1.0  # how often an open page asks for the status while the fetch runs
State = Literal["waiting", "running", "done", "failed"]
STAGES = {"verify": "checking the download", "convert": "converting it for this library"}


def fetch_requested(environ: Mapping[str, str] | None = None) -> bool:
    value = (environ if environ is not None else os.environ).get(FETCH_ENV, "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


@dataclass(frozen=True)
class Snapshot:
    """What the status line shows, read at one moment."""

    state: State
    text: str  # Markdown, "" when there is nothing to say
    version: int  # the registry's version: dropdowns that saw an older one need the new choices


class OfficialFetch:
    """`ensure_official` in a background thread, its progress as a sentence, its folder added to
    `models` when it is done. Fails softly: the app keeps serving the models it has."""

    def __init__(self, models: ModelRegistry, folder: Path | None = None) -> None:
        self.models = models
        self.folder = folder if folder is not None else default_official_dir()
        self.key: str | None = None  # the model's label once added
        self._state: State = "waiting"
        self._progress = "starting"
        self._error = ""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> OfficialFetch:
        with self._lock:
            if self._thread is None:
                self._state = "running"
                self._thread = threading.Thread(target=self._run, name="reptok-fetch-official", daemon=True)
                self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the fetch (tests); True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state in ("done", "failed")

    @property
    def state(self) -> State:
        with self._lock:
            return self._state

    def _report(self, stage: str, done: int, total: int | None) -> None:
        if stage == "download":
            text = f"downloading {_gb(done)} / {_gb(total)} GB" if total else f"downloading {_gb(done)} GB"
            if total:
                text += f" ({100 * done / total:.0f} %)"
        else:
            text = STAGES.get(stage, stage)
        with self._lock:
            self._progress = text

    def _run(self) -> None:
        try:
            # Looked up at call time, so tests can put a fake in this module's namespace.
            folder = ensure_official(self.folder, progress=self._report)
            key = self.models.add(folder)
        except DownloadError as err:
            self._fail(str(err))
        except Exception as err:  # the app must keep serving: any failure becomes the status line
            log.exception("fetching the official model failed")
            self._fail(f"{type(err).__name__}: {err}")
        else:
            with self._lock:
                self.key, self._state = key, "done"

    def _fail(self, message: str) -> None:
        with self._lock:
            self._error, self._state = message, "failed"

    def snapshot(self) -> Snapshot:
        with self._lock:
            state, progress, error, key = self._state, self._progress, self._error, self.key
        name = f"official RepTok-XL model (`{OFFICIAL_NAME}`)"
        if state == "running":
            text = f"⏳ The {name} is on its way: {progress}. Meanwhile the embedded models serve."
        elif state == "done":
            text = f"✅ The {name} is ready: choose `{key}` in a Tokenizer menu."
        elif state == "failed":
            text = f"⚠️ The {name} could not be fetched: {error}. The app keeps serving the embedded models."
        else:
            text = ""
        return Snapshot(state=state, text=text, version=self.models.version)


def refresh(
    fetch: OfficialFetch | None, models: ModelRegistry, seen: int, abilities: Sequence[Ability]
) -> tuple[Any, ...]:
    """One tick: (status text, timer, version seen, *dropdown updates). The dropdowns (one per entry
    of `abilities`: what its tab asks of a model) get the registry's choices only when a model was
    added since the page last saw them (`seen`)."""
    snap = fetch.snapshot() if fetch is not None else Snapshot("done", "", models.version)
    ended = snap.state in ("done", "failed")
    timer = gr.Timer(active=not ended)
    if snap.version == seen:
        return (snap.text, timer, seen, *[gr.skip()] * len(abilities))
    return (snap.text, timer, snap.version, *[gr.Dropdown(choices=models.choices(can)) for can in abilities])


def status_line(
    demo: gr.Blocks,
    models: ModelRegistry,
    fetch: OfficialFetch | None,
    dropdowns: Sequence[tuple[gr.Dropdown, Ability]],
) -> None:
    """The status line under the title, refreshed on page load and, while the fetch runs, every
    TICK_S seconds; both also give the model dropdowns the registry's new choices. Without a fetch:
    nothing is shown and no timer runs."""
    if fetch is None:
        return
    status = gr.Markdown(fetch.snapshot().text, elem_id="official-status")
    timer = gr.Timer(TICK_S, active=fetch.state == "running")
    seen = gr.State(models.version)  # what this page's dropdowns were built with
    gr.on(
        [demo.load, timer.tick],
        lambda seen_version: refresh(fetch, models, seen_version, [can for _, can in dropdowns]),
        seen,
        [status, timer, seen, *(menu for menu, _ in dropdowns)],
        show_progress="hidden",
        api_visibility="private",
        queue=False,  # a status line must not wait behind someone's decode
    )
