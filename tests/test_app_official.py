"""The official model fetched at app start (app_parts/official.py), with fake downloads: no network.

The app starts at once on the embedded models; a background thread runs `ensure_official`; the
status line says how far it is; the finished model joins the registry and the dropdowns; a failure
is said in the status line and the app keeps serving."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

gr = pytest.importorskip("gradio")

from app import build_demo  # noqa: E402
from app_parts import official  # noqa: E402
from app_parts.handlers import Explorer  # noqa: E402
from app_parts.official import OfficialFetch, fetch_requested, refresh  # noqa: E402
from app_parts.registry import ModelRegistry  # noqa: E402
from reptok.download import OFFICIAL_NAME, DownloadError  # noqa: E402
from reptok.pipeline import RepTok  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

DROPDOWNS = [
    "reconstruct",
    "class",
    "text",
    "reconstruct",
]  # what each model menu of build_demo asks of a model
GB = 10**9


def _write_model(folder: Path, name: str) -> Path:
    """A tiny model folder, as `ensure_official` leaves a converted one."""
    torch.manual_seed(0)
    model = RepTok.from_config(tiny_config(with_text=False))
    model.config.info = {"name": name}
    return model.save_pretrained(folder, dtype=torch.float32)


@pytest.fixture
def embedded(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry([_write_model(tmp_path / "embedded", "embedded")])


def _fake(
    monkeypatch: pytest.MonkeyPatch, body: Callable[[Path, Callable[[str, int, int | None], None]], Path]
) -> list[Path]:
    """Put a fake `ensure_official` in app_parts.official; the folders it was asked for."""
    asked: list[Path] = []

    def fake_ensure_official(out_dir: Path, *, progress: Callable[[str, int, int | None], None]) -> Path:
        asked.append(Path(out_dir))
        return body(Path(out_dir), progress)

    monkeypatch.setattr(official, "ensure_official", fake_ensure_official)
    return asked


def _reconstructs(models: ModelRegistry, image: Path) -> bool:
    *_, summary = Explorer(models, Path("none.npz")).reconstruct(str(image), "embedded", 1, 0)
    return "PSNR" in summary


@pytest.fixture
def image(tmp_path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    return tmp_path / "red.png"


def test_fetch_succeeds_and_the_model_joins_the_dropdowns(
    embedded: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def download(out: Path, progress: Callable[[str, int, int | None], None]) -> Path:
        progress("download", 3 * GB, 3 * GB)
        progress("verify", 0, None)
        progress("convert", 0, None)
        return _write_model(out, OFFICIAL_NAME)

    asked = _fake(monkeypatch, download)
    fetch = OfficialFetch(embedded, tmp_path / "models" / OFFICIAL_NAME).start()
    assert fetch.join(timeout=120)
    assert asked == [tmp_path / "models" / OFFICIAL_NAME]
    assert fetch.state == "done" and fetch.key == OFFICIAL_NAME
    assert embedded.labels == ["embedded", OFFICIAL_NAME] and embedded.default == "embedded"
    assert "is ready: choose `reptok-xl-imagenet256`" in fetch.snapshot().text
    # A page built before the model arrived (version 0) gets it in every model dropdown, once.
    text, timer, seen, *dropdowns = refresh(fetch, embedded, 0, DROPDOWNS)
    assert seen == embedded.version == 1 and timer.active is False and "ready" in text
    assert len(dropdowns) == len(DROPDOWNS)
    both = ["embedded", OFFICIAL_NAME]
    expected = {"reconstruct": both, "class": both, "text": []}  # neither model has a text generator
    for dropdown, can in zip(dropdowns, DROPDOWNS, strict=True):
        assert [value for _, value in dropdown.choices] == expected[can]
    assert refresh(fetch, embedded, seen, DROPDOWNS)[3:] == (gr.skip(),) * len(DROPDOWNS)
    assert embedded.get(OFFICIAL_NAME).image_size == 32  # and it loads


def test_fetch_fails_and_the_app_keeps_serving(
    embedded: ModelRegistry, tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def download(out: Path, progress: Callable[[str, int, int | None], None]) -> Path:
        progress("download", GB // 2, None)
        raise DownloadError("https://example.org/x.ckpt: HTTP 404 Not Found")

    _fake(monkeypatch, download)
    fetch = OfficialFetch(embedded, tmp_path / OFFICIAL_NAME).start()
    assert fetch.join(timeout=60) and fetch.state == "failed"
    text = fetch.snapshot().text
    assert "could not be fetched: https://example.org/x.ckpt: HTTP 404 Not Found" in text
    assert "keeps serving the embedded models" in text
    assert embedded.labels == ["embedded"] and embedded.version == 0
    text, timer, seen, *dropdowns = refresh(fetch, embedded, 0, DROPDOWNS)
    assert timer.active is False and seen == 0 and dropdowns == [gr.skip()] * len(DROPDOWNS)
    assert _reconstructs(embedded, image)


def test_unexpected_error_is_reported_too(
    embedded: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def download(out: Path, progress: Callable[[str, int, int | None], None]) -> Path:
        out.mkdir(parents=True)
        return out  # no config.json: the registry cannot add it

    _fake(monkeypatch, download)
    fetch = OfficialFetch(embedded, tmp_path / OFFICIAL_NAME).start()
    assert fetch.join(timeout=60) and fetch.state == "failed"
    assert "could not be fetched: ValueError: cannot add" in fetch.snapshot().text
    assert embedded.labels == ["embedded"]


def test_app_starts_and_serves_while_the_download_runs(
    embedded: ModelRegistry, tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, reported = threading.Event(), threading.Event()

    def download(out: Path, progress: Callable[[str, int, int | None], None]) -> Path:
        progress("download", int(1.2 * GB), int(4.8 * GB))
        reported.set()
        assert release.wait(timeout=120), "the test never released the download"
        return _write_model(out, OFFICIAL_NAME)

    _fake(monkeypatch, download)
    fetch = OfficialFetch(embedded, tmp_path / OFFICIAL_NAME).start()
    try:
        assert reported.wait(timeout=60)
        assert fetch.state == "running"
        assert (
            "The official RepTok-XL model (`reptok-xl-imagenet256`) is on its way: downloading "
            "1.20 / 4.80 GB (25 %)"
        ) in fetch.snapshot().text
        demo = build_demo(embedded, manifold_path=tmp_path / "none.npz", official=fetch)
        timers = [b for b in demo.blocks.values() if isinstance(b, gr.Timer)]
        assert len(timers) == 1 and timers[0].active  # the page asks for news while it runs
        assert _reconstructs(embedded, image)  # the embedded models serve meanwhile
        text, timer, _seen, *dropdowns = refresh(fetch, embedded, 0, DROPDOWNS)
        assert timer.active is True and "downloading" in text and dropdowns == [gr.skip()] * len(DROPDOWNS)
    finally:
        release.set()
    assert fetch.join(timeout=120) and fetch.state == "done"
    assert OFFICIAL_NAME in embedded.labels


def test_no_fetch_no_status_line(embedded: ModelRegistry, tmp_path: Path) -> None:
    demo = build_demo(embedded, manifold_path=tmp_path / "none.npz")
    assert not any(isinstance(b, gr.Timer) for b in demo.blocks.values())
    config = demo.get_config_file()
    assert not any(c.get("props", {}).get("elem_id") == "official-status" for c in config["components"])


@pytest.mark.parametrize(
    ("value", "wanted"),
    [("1", True), ("true", True), ("YES", True), ("", False), ("0", False), ("no", False), (None, False)],
)
def test_fetch_requested(value: str | None, wanted: bool) -> None:
    assert fetch_requested({} if value is None else {official.FETCH_ENV: value}) is wanted


# ------------------------------------------------------------------------------- registry.add


def test_registry_add(embedded: ModelRegistry, tmp_path: Path) -> None:
    folder = _write_model(tmp_path / "extra", "embedded")  # a name already taken
    key = embedded.add(folder)
    assert key == "embedded (extra)" and embedded.version == 1 and embedded.default == "embedded"
    assert embedded.add(folder) == key and embedded.version == 1  # the same folder: nothing new
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot add"):
        embedded.add(tmp_path / "broken")
    assert embedded.labels == ["embedded", "embedded (extra)"]


def test_registry_add_from_threads_while_others_read(embedded: ModelRegistry, tmp_path: Path) -> None:
    folders = [_write_model(tmp_path / f"m{i}", f"m{i}") for i in range(8)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:  # what request handlers do: walk the entries
        while not stop.is_set():
            try:
                for _ in embedded.entries.values():
                    pass
                embedded.choices(), embedded.lambda_row(), embedded.backbone_row()
            except BaseException as err:
                errors.append(err)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    adders = [threading.Thread(target=embedded.add, args=(f,)) for f in folders * 2]  # each twice
    for a in adders:
        a.start()
    for a in adders:
        a.join()
    stop.set()
    for r in readers:
        r.join()
    assert not errors
    assert sorted(embedded.labels) == sorted(["embedded", *(f"m{i}" for i in range(8))])
    assert embedded.version == 8
