"""The app in a real browser (Debian's Chromium through Playwright): upload, reconstruct, every tab."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    port = _free_port()
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
