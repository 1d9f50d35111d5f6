"""The app in a real browser (Debian's Chromium through Playwright): upload, reconstruct, every tab."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.app_fixtures import free_port

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-output" / "screenshots"
TABS = ["Class sampling", "Text prompts", "Interpolation", "Latent manifold", "Backbones", "About"]

pytestmark = [
    pytest.mark.browser,
    # Skipped on a developer machine without Chromium; never in CI, where .ci/run installs it.
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from app import CSS, ModelRegistry, build_demo
    from reptok.manifold import fit_2d, save_manifold
    from reptok.pipeline import RepTok
    from tests.helpers import randomize_, tiny_config

    torch.manual_seed(0)
    model = RepTok.from_config(tiny_config())
    randomize_(model.decoder, seed=1)
    model_dir = model.save_pretrained(tmp_path_factory.mktemp("models") / "tiny", dtype=torch.float32)
    # A small map, so the Plotly figure is drawn in the browser too.
    tokens = np.random.default_rng(0).normal(size=(12, model.token_dim)).astype(np.float32)
    manifold = save_manifold(
        tmp_path_factory.mktemp("m") / "manifold.npz",
        names=[f"emoji {i}" for i in range(12)],
        categories=["Food & Drink", "Animals & Nature"] * 6,
        settings={"1": {"xy": fit_2d(tokens), "tokens": tokens}},
    )
    demo = build_demo(ModelRegistry([model_dir]), manifold_path=manifold)
    port = free_port()
    demo.queue().launch(
        prevent_thread_lock=True, server_port=port, server_name="127.0.0.1", quiet=True, css=CSS
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def test_app_in_browser(app_url: str, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    image = tmp_path / "upload.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(image)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
            ],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(app_url, wait_until="domcontentloaded")
            page.get_by_text("RepTok Explorer").first.wait_for(timeout=60_000)

            page.locator("input[type=file]").first.set_input_files(str(image))  # upload runs reconstruct
            page.locator("#reconstruction img").wait_for(state="visible", timeout=60_000)
            page.get_by_text("PSNR").first.wait_for(timeout=60_000)
            page.screenshot(path=str(SCREENSHOTS / "reconstruct.png"), full_page=True)

            for name in TABS:
                page.get_by_role("tab", name=name).click()
                page.locator(f"#tab-{name.lower().replace(' ', '-')}").wait_for(state="visible")
                if name == "Latent manifold":  # Plotly draws once its script has loaded
                    page.locator("#tab-latent-manifold .js-plotly-plot").wait_for(
                        state="visible", timeout=30_000
                    )
                page.wait_for_timeout(300)  # let the tab lay itself out before the screenshot
                page.screenshot(
                    path=str(SCREENSHOTS / f"{name.lower().replace(' ', '_')}.png"), full_page=True
                )
        finally:
            browser.close()
    assert not errors, "console errors:\n" + "\n".join(errors)


def _browser(p: object) -> object:
    return p.chromium.launch(  # type: ignore[attr-defined]
        executable_path=str(CHROMIUM),
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
    )


@contextlib.contextmanager
def _app_page(url: str) -> Iterator[Any]:
    """A 1280×1000 page of the app at `url`, in a browser of its own, once the Reconstruct tab's time
    estimate shows."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})  # type: ignore[attr-defined]
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_text("on this machine").first.wait_for(timeout=60_000)
            yield page
        finally:
            browser.close()  # type: ignore[attr-defined]


def test_manifold_click_shows_the_emoji(app_url: str) -> None:
    """gr.Plot reports no clicks; the page's script (app_parts/tab_manifold.py) hands Plotly's click
    on a point to the app, which shows that emoji; the time estimate is under the button."""
    with _app_page(app_url) as page:
        page.get_by_role("tab", name="Latent manifold").click()
        plot = page.locator("#manifold-plot .js-plotly-plot")
        plot.wait_for(state="visible", timeout=30_000)
        plot.scroll_into_view_if_needed()  # a mouse click lands only on the visible page
        page.wait_for_timeout(1000)  # the click hook attaches within 0.5 s
        # Where Plotly drew the first point of the first trace, in page pixels.
        x, y, name = plot.evaluate(
            """(gd) => {
                const t = gd._fullData[0], xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
                const box = gd.getBoundingClientRect();
                return [box.left + xa._offset + xa.l2p(t.x[0]), box.top + ya._offset + ya.l2p(t.y[0]),
                        t.text[0]];
            }"""
        )
        page.mouse.move(x, y)
        page.wait_for_timeout(300)
        page.mouse.click(x, y)
        page.locator("#tab-latent-manifold").get_by_text("decoded by each λ's model").wait_for(timeout=60_000)
        assert page.locator("#tab-latent-manifold strong", has_text=name).count() >= 1
        page.screenshot(path=str(SCREENSHOTS / "manifold_click.png"), full_page=True)


def test_official_model_status_and_dropdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fetch of the official model (faked, held until released): the page shows its progress, then
    offers the model in the Tokenizer menu without a reload."""
    sync_api = pytest.importorskip("playwright.sync_api")
    import threading

    from app import CSS, ModelRegistry, build_demo
    from app_parts import official
    from reptok.download import OFFICIAL_NAME
    from reptok.pipeline import RepTok
    from tests.helpers import tiny_config

    def write(folder: Path, name: str) -> Path:
        model = RepTok.from_config(tiny_config(with_text=False))
        model.config.info = {"name": name}
        return model.save_pretrained(folder, dtype=torch.float32)

    release = threading.Event()

    def fake_ensure_official(out_dir: Path, *, progress: object) -> Path:
        progress("download", 2 * 10**9, 8 * 10**9)  # type: ignore[operator]
        release.wait(timeout=120)
        return write(Path(out_dir), OFFICIAL_NAME)

    monkeypatch.setattr(official, "ensure_official", fake_ensure_official)
    models = ModelRegistry([write(tmp_path / "embedded", "embedded")])
    fetch = official.OfficialFetch(models, tmp_path / OFFICIAL_NAME).start()
    demo = build_demo(models, manifold_path=tmp_path / "none.npz", official=fetch)
    port = free_port()
    demo.queue().launch(
        prevent_thread_lock=True, server_port=port, server_name="127.0.0.1", quiet=True, css=CSS
    )
    try:
        with sync_api.sync_playwright() as p:
            browser = _browser(p)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})  # type: ignore[attr-defined]
                page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
                status = page.locator("#official-status")
                status.get_by_text("downloading 2.00 / 8.00 GB (25 %)").wait_for(timeout=60_000)
                release.set()
                status.get_by_text("is ready").wait_for(timeout=60_000)  # the timer's next tick
                page.get_by_text("Settings").first.click()
                page.get_by_label("Tokenizer").first.click()
                page.get_by_role("option", name=OFFICIAL_NAME, exact=False).first.wait_for(timeout=30_000)
                page.screenshot(path=str(SCREENSHOTS / "official_status.png"), full_page=True)
            finally:
                browser.close()  # type: ignore[attr-defined]
    finally:
        release.set()
        demo.close()


def test_sampler_defaults_follow_the_chosen_model(tmp_path: Path) -> None:
    """Each model brings its own default decoder steps, decoder noise τ, guidance scale and interval:
    picking it in a tab's menu sets the sliders."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from app import CSS, ModelRegistry, build_demo
    from reptok.pipeline import RepTok
    from tests.helpers import tiny_config

    def write(name: str, steps: int, cfg: float, tau: float, interval: tuple[float, float]) -> Path:
        model = RepTok.from_config(tiny_config(with_text=False))
        model.config.info = {"name": name}
        model.config.sampling = model.config.sampling.replace(
            decode_steps=steps, cfg_scale=cfg, decode_temperature=tau, cfg_interval=interval
        )
        return model.save_pretrained(tmp_path / name, dtype=torch.float32)

    models = ModelRegistry(
        [write("fast", 2, 2.5, 0.3, (0.3, 0.9)), write("slow", 37, 6.5, 0.85, (0.1, 0.95))]
    )
    demo = build_demo(models, manifold_path=tmp_path / "no.npz")
    port = free_port()
    demo.queue().launch(
        prevent_thread_lock=True, server_port=port, server_name="127.0.0.1", quiet=True, css=CSS
    )
    try:
        with sync_api.sync_playwright() as p:
            browser = _browser(p)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})  # type: ignore[attr-defined]
                page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
                # (tab, its element id, [(slider, the default model's value, the "slow" model's value)])
                tau = "Decoder noise τ (0: no variation, 1: full spread)"
                for tab_name, tab_id, sliders in [
                    ("Reconstruct", "tab-reconstruct", [("Decoder steps", "2", "37"), (tau, "0.3", "0.85")]),
                    (
                        "Class sampling",
                        "tab-class-sampling",
                        [
                            ("CFG scale", "2.5", "6.5"),
                            ("Guidance from t =", "0.3", "0.1"),
                            ("Guidance until t =", "0.9", "0.95"),
                        ],
                    ),
                ]:
                    page.get_by_role("tab", name=tab_name).click()
                    tab = page.locator(f"#{tab_id}")
                    tab.get_by_text("Settings").first.click()
                    for slider_label, default, _ in sliders:
                        slider = tab.get_by_label(f"number input for {slider_label}")
                        slider.wait_for(timeout=60_000)
                        assert slider.input_value() == default
                    tab.get_by_label("Tokenizer").first.click()
                    page.get_by_role("option", name="slow").first.click()
                    for slider_label, _, slow in sliders:
                        page.wait_for_function(
                            f"() => document.querySelector('#{tab_id} input[aria-label=\"number input for "
                            f"{slider_label}\"]').value === '{slow}'",
                            timeout=30_000,
                        )
            finally:
                browser.close()  # type: ignore[attr-defined]
    finally:
        demo.close()


def test_reconstruct_answers_on_a_fresh_page(app_url: str) -> None:
    """The image tabs open on held-out examples, so Reconstruct answers without an upload; a one-row
    gallery is as tall as its row (app.CSS lifts Gradio's 450 px minimum)."""
    with _app_page(app_url) as page:
        tab = page.locator("#tab-reconstruct")
        tab.get_by_role("button", name="Reconstruct").click()
        page.locator("#reconstruction img").wait_for(state="visible", timeout=60_000)
        tab.get_by_text("PSNR").first.wait_for(timeout=60_000)
        variations = tab.locator(".pixelated .grid-wrap")
        variations.locator("img").nth(3).wait_for(state="visible", timeout=60_000)  # 4 seeds, one row
        tile = variations.locator("img").first.bounding_box()
        box = variations.bounding_box()
        assert tile is not None and box is not None
        assert box["height"] < tile["height"] + 100, (box, tile)
        page.screenshot(path=str(SCREENSHOTS / "reconstruct_fresh_page.png"), full_page=True)


def test_clicking_an_example_reconstructs_it(app_url: str) -> None:
    """A click on one of the Reconstruct tab's examples shows its reconstruction, no button needed."""
    with _app_page(app_url) as page:
        tab = page.locator("#tab-reconstruct")
        tab.locator("table tbody tr, .gallery-item").first.click()
        page.locator("#reconstruction img").wait_for(state="visible", timeout=60_000)
        tab.get_by_text("PSNR").first.wait_for(timeout=60_000)
