"""The Gradio app, driven through its HTTP API with gradio_client, on a tiny random model."""

from __future__ import annotations

import io
import json
import socket
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio")
client_mod = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from app import CSS, ModelRegistry, build_demo  # noqa: E402
from reptok.manifold import fit_2d, load_manifold, nearest, place, save_manifold  # noqa: E402
from reptok.pipeline import RepTok  # noqa: E402
from tests.helpers import CLASS_NAMES, randomize_, tiny_config  # noqa: E402

SIZE = 32  # the tiny model's image size
LAMBDAS = ["0", "1", "inf"]  # the test manifold's settings, in its order


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = RepTok.from_config(tiny_config())
    model.config.info = {"name": "tiny"}
    randomize_(model.decoder, seed=1)
    randomize_(model.class_generator, seed=2)
    randomize_(model.text_generator, seed=3)
    return model.save_pretrained(tmp_path_factory.mktemp("models") / "tiny", dtype=torch.float32)


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
    key = ModelRegistry([model_dir]).default
    assert key is not None
    # Three λ settings; only "1" has a model (the tiny one): the others fall back to it, with a note.
    settings = {lam: {"xy": fit_2d(tokens, seed=i), "tokens": tokens} for i, lam in enumerate(LAMBDAS)}
    return save_manifold(path, names=names, categories=cats, settings=settings, model_tokens={key: tokens})


@pytest.fixture(scope="module")
def client(model_dir: Path, manifold_path: Path) -> Iterator[Client]:
    demo = build_demo(ModelRegistry([model_dir]), manifold_path=manifold_path)
    port = _free_port()
    demo.queue().launch(prevent_thread_lock=True, server_port=port, server_name="127.0.0.1", quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def _item_path(item: dict) -> str:
    """A gallery item's image path, as gradio_client returns it (a path, or a FileData dict)."""
    image = item["image"]
    return image if isinstance(image, str) else image["path"]


def _error(client: Client, *args: object, api_name: str) -> str:
    with pytest.raises(Exception) as info:  # gradio_client.exceptions.AppError carries gr.Error's text
        client.predict(*args, api_name=api_name)
    return str(info.value)


# ------------------------------------------------------------------------------- endpoints


def test_reconstruct(client: Client, files: dict[str, Path]) -> None:
    original, recon, heat, summary = client.predict(
        handle_file(files["rgb.png"]), "tiny", 2, 0, api_name="/reconstruct"
    )
    assert Image.open(original).size == (SIZE, SIZE)
    assert Image.open(recon).size == (SIZE, SIZE)
    assert Image.open(heat).size == (SIZE * 4, SIZE * 4)
    assert "PSNR" in summary and "SSIM" in summary and "cos(z, z_frozen)" in summary
    assert f"vs {SIZE}×{SIZE}×3 = {SIZE * SIZE * 3:,} bytes" in summary


def test_variations(client: Client, files: dict[str, Path]) -> None:
    gallery = client.predict(handle_file(files["rgb.png"]), "tiny", 2, 5, api_name="/variations")
    assert [item["caption"] for item in gallery] == ["seed 5", "seed 6", "seed 7", "seed 8"]


def test_decoder_temperature_sets_how_far_variations_spread(client: Client, files: dict[str, Path]) -> None:
    """τ scales the decoder's starting noise: at 0 the four seeds decode one image, at 1 four."""

    def variations(tau: float) -> set[bytes]:
        gallery = client.predict(handle_file(files["rgb.png"]), "tiny", 2, 5, tau, api_name="/variations")
        return {np.asarray(Image.open(_item_path(item))).tobytes() for item in gallery}

    assert len(variations(0.0)) == 1
    assert len(variations(1.0)) == 4
    *_, summary = client.predict(handle_file(files["rgb.png"]), "tiny", 2, 0, 0.5, api_name="/reconstruct")
    assert "decoded in 2 steps from noise scaled by τ = 0.5" in summary
    *_, summary = client.predict(handle_file(files["rgb.png"]), "tiny", 2, 0, api_name="/reconstruct")
    assert "τ = 1" in summary  # no τ given: the slider's start, the model's own default


def test_sampling_menus_offer_only_models_that_can_sample(model_dir: Path, tmp_path: Path) -> None:
    """A tokenizer-only model (an ablation row shipped without generators) reconstructs but is not
    offered by the class and text tabs; a model with a class generator only is not offered for text."""
    from app_parts.registry import ModelRegistry as Registry

    def write(name: str, with_class: bool, with_text: bool) -> Path:
        model = RepTok.from_config(tiny_config(with_text=with_text))
        if not with_class:
            model.class_generator, model.config.class_generator = None, None
        model.config.info = {"name": name, "main": name == "tokenizer-only"}
        return model.save_pretrained(tmp_path / name, dtype=torch.float32)

    registry = Registry([write("tokenizer-only", False, False), write("class", True, False), model_dir])
    assert registry.default == "tokenizer-only"
    assert [key for _, key in registry.choices()] == ["tokenizer-only", "class", "tiny"]
    assert [key for _, key in registry.choices("class")] == ["class", "tiny"]
    assert [key for _, key in registry.choices("text")] == ["tiny"]
    assert (registry.default_for("class"), registry.default_for("text")) == ("class", "tiny")
    demo = build_demo(registry, manifold_path=tmp_path / "none.npz")
    menus = [b for b in demo.blocks.values() if type(b).__name__ == "Dropdown" and b.label == "Tokenizer"]
    assert [([key for _, key in m.choices], m.value) for m in menus] == [
        (["tokenizer-only", "class", "tiny"], "tokenizer-only"),  # Reconstruct
        (["class", "tiny"], "class"),  # Class sampling
        (["tiny"], "tiny"),  # Text prompts
        (["tokenizer-only", "class", "tiny"], "tokenizer-only"),  # Interpolation
    ]


def test_text_tab_opens_on_an_example_prompt(model_dir: Path, tmp_path: Path) -> None:
    """Sample on a fresh page draws something: the prompt box holds an example, not just a placeholder."""
    from app_parts.tabs import PROMPT_EXAMPLES

    demo = build_demo(ModelRegistry([model_dir]), manifold_path=tmp_path / "none.npz")
    (prompt,) = [b for b in demo.blocks.values() if type(b).__name__ == "Textbox" and b.label == "Prompt"]
    assert prompt.value == PROMPT_EXAMPLES[0]


def test_image_tabs_open_on_the_opening_examples(model_dir: Path, tmp_path: Path) -> None:
    """Reconstruct, Interpolation and Backbones open on held-out examples (the browser test clicks
    Reconstruct on a fresh page); opening_images falls back to the other examples, then to None."""
    from app_parts.tabs import OPENING_EXAMPLES, opening_images

    demo = build_demo(ModelRegistry([model_dir]), manifold_path=tmp_path / "none.npz")
    values = {
        b.label: Path(b.value["path"]).name if b.value else None
        for b in demo.blocks.values()
        if type(b).__name__ == "Image" and b.label in {"Image", "Image A", "Image B"}
    }
    first, second = OPENING_EXAMPLES
    assert values == {"Image": first, "Image A": first, "Image B": second}
    assert opening_images(["x/a.png", f"x/{second}", "x/b.png"], 3) == [f"x/{second}", "x/a.png", "x/b.png"]
    assert opening_images(["x/a.png"], 2) == ["x/a.png", None]
    assert opening_images([], 1) == [None]


def test_interpolation_outputs_come_before_its_example_pairs(model_dir: Path, tmp_path: Path) -> None:
    """The strip of frames sits right under the inputs; the table of example pairs (eight rows of
    images) comes after it, as the Reconstruct tab's examples come after its outputs."""
    demo = build_demo(ModelRegistry([model_dir]), manifold_path=tmp_path / "none.npz")
    order = [
        (type(b).__name__, getattr(b, "label", None)) for b in demo.blocks.values()
    ]  # the order the page lays out
    assert order.index(("Gallery", "A → B")) < order.index(("Dataset", "Example pairs"))


def test_class_tab_opens_on_an_example_class_the_model_has(model_dir: Path, tmp_path: Path) -> None:
    """With "Smileys & Emotion" second among its classes, the tab opens on it (the first of
    CLASS_EXAMPLES the model has) and lists it as an example; a model with none opens on its first."""
    from app_parts.tabs import CLASS_EXAMPLES

    def blocks(folder: Path, kind: str, label: str) -> list[Any]:
        demo = build_demo(ModelRegistry([folder]), manifold_path=tmp_path / "none.npz")
        return [b for b in demo.blocks.values() if type(b).__name__ == kind and b.label == label]

    model = RepTok.from_pretrained(model_dir)
    model.config.class_names = ["Food & Drink", "Smileys & Emotion", "Travel & Places"]
    reordered = model.save_pretrained(tmp_path / "reordered", dtype=torch.float32)
    assert "Smileys & Emotion" in CLASS_EXAMPLES
    assert [m.value for m in blocks(reordered, "Dropdown", "Class")] == ["Smileys & Emotion"]
    assert [d.samples for d in blocks(reordered, "Dataset", "Classes")] == [[["Smileys & Emotion"]]]
    model.config.class_names = ["alpha", "beta", "gamma"]
    plain = model.save_pretrained(tmp_path / "plain", dtype=torch.float32)
    assert [m.value for m in blocks(plain, "Dropdown", "Class")] == ["alpha"]
    assert blocks(plain, "Dataset", "Classes") == []
    # Picking a model in the tab's menu refills the class menu and opens it the same way (not empty).
    registry = ModelRegistry([plain, reordered])
    demo = build_demo(registry, manifold_path=tmp_path / "none.npz")
    (menu,) = [b for b in demo.blocks.values() if type(b).__name__ == "Dropdown" and b.label == "Class"]
    (refill,) = [f for f in demo.fns.values() if [o._id for o in f.outputs] == [menu._id]]
    key = {Path(e.path).name: e.key for e in registry.entries.values()}
    for folder, opening in (("reordered", "Smileys & Emotion"), ("plain", "alpha")):
        assert refill.fn(key[folder]).value == opening


def test_each_sampling_tab_opens_on_its_generators_guidance_interval(model_dir: Path, tmp_path: Path) -> None:
    """The class tab's interval sliders start at the model's `cfg_interval`, the text tab's at its
    `text_cfg_interval`, and picking a model in either tab sets them to that model's own."""
    model = RepTok.from_pretrained(model_dir)
    model.config.sampling = model.config.sampling.replace(
        cfg_interval=(0.0, 1.0), text_cfg_interval=(0.15, 0.9)
    )
    split = model.save_pretrained(tmp_path / "split", dtype=torch.float32)
    registry = ModelRegistry([split, model_dir])
    demo = build_demo(registry, manifold_path=tmp_path / "none.npz")
    sliders = {
        label: [b for b in demo.blocks.values() if type(b).__name__ == "Slider" and b.label == label]
        for label in ("Guidance from t =", "Guidance until t =")
    }
    # built in tab order: Class sampling, then Text prompts
    assert [s.value for s in sliders["Guidance from t ="]] == [0.0, 0.15]
    assert [s.value for s in sliders["Guidance until t ="]] == [1.0, 0.9]
    key = {Path(e.path).name: e.key for e in registry.entries.values()}
    shared = RepTok.from_pretrained(model_dir).config.sampling.cfg_interval
    for tab, expected in enumerate([(0.0, 1.0), (0.15, 0.9)]):
        lo, hi = sliders["Guidance from t ="][tab], sliders["Guidance until t ="][tab]
        (follow,) = [f for f in demo.fns.values() if {lo._id, hi._id} <= {o._id for o in f.outputs}]
        where = [o._id for o in follow.outputs]
        for folder, interval in (("split", expected), (model_dir.name, shared)):
            values = follow.fn(key[folder])
            assert (values[where.index(lo._id)].value, values[where.index(hi._id)].value) == tuple(interval)


def test_sample_class(client: Client) -> None:
    gallery = client.predict(CLASS_NAMES[1], "tiny", 1.5, 0.3, 0.9, 2, 0, 3, api_name="/sample_class")
    assert len(gallery) == 3
    assert Image.open(_item_path(gallery[0])).size == (SIZE, SIZE)


def test_sample_text(client: Client) -> None:
    gallery = client.predict("red apple", "tiny", 1.5, 0.3, 0.9, 2, 0, 2, api_name="/sample_text")
    assert len(gallery) == 2
    gallery = client.predict("x" * 10_000, "tiny", 1.5, 0.3, 0.9, 1, 0, 1, api_name="/sample_text")
    assert len(gallery) == 1  # long prompts are truncated, not a crash


def test_sample_generator_temperature(client: Client) -> None:
    """The Generator noise T slider reaches the generator: T = 0 draws one token per class, so the
    samples of one seed differ from T = 1's; an API call without it keeps the model's default, and
    one past the slider's range is refused with a message naming the bound."""
    args = (CLASS_NAMES[1], "tiny", 1.5, 0.3, 0.9, 2, 0, 2)
    pixels = [
        [
            np.asarray(Image.open(_item_path(item)))
            for item in client.predict(*args, t, api_name="/sample_class")
        ]
        for t in (0.0, 1.0)
    ]
    assert not np.array_equal(pixels[0][0], pixels[1][0])
    default = client.predict(*args, api_name="/sample_class")
    assert len(default) == 2
    assert "greater than maximum value 1.5" in _error(client, *args, 9.0, api_name="/sample_class")


def test_interpolate(client: Client, files: dict[str, Path]) -> None:
    strip, gif, frame = client.predict(
        handle_file(files["rgb.png"]), handle_file(files["other.png"]), "tiny", 5, "slerp", 2, 0, 1.0,
        api_name="/interpolate",
    )  # fmt: skip
    assert len(strip) == 5
    assert [s["caption"] for s in strip] == ["0.00", "0.25", "0.50", "0.75", "1.00"]
    with Image.open(gif) as g:
        # There and back is 5 + 3 frames. Pillow merges frames that quantise the same (a random
        # model's often do) into one stored frame whose delay is theirs added up, so the frame count
        # the file encodes is its delays (GIF metadata) in units of one frame at write_gif's 8 fps.
        assert g.format == "GIF" and 1 <= g.n_frames <= 8
        delays = []
        for i in range(g.n_frames):
            g.seek(i)
            delays.append(g.info["duration"])
        assert round(sum(delays) / (1000 / 8)) == 5 + 3
    last = np.asarray(Image.open(_item_path(strip[-1])).convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(frame).convert("RGB")), last)  # weight 1 -> last frame


def test_manifold(client: Client, files: dict[str, Path]) -> None:
    plot, note = client.predict(None, api_name="/manifold")
    figure = json.loads(plot["plot"])  # gr.Plot's payload: the Plotly figure as JSON
    assert [a["text"] for a in figure["layout"]["annotations"]] == [f"λ = {lam}" for lam in LAMBDAS]
    assert "12 held-out tokens" in note and "Click a point" in note
    plot, note = client.predict(handle_file(files["rgb.png"]), api_name="/manifold")
    stars = [t for t in json.loads(plot["plot"])["data"] if t["name"] == "your image"]
    assert len(stars) == len(LAMBDAS)
    assert "- **λ = 1** (`tiny`): emoji" in note  # neighbours per λ, each λ with its own model ...
    assert (
        "- **λ = 0** (`tiny`; no loaded model has λ = 0, so `tiny` encoded it): emoji" in note
    )  # ... or not


def test_manifold_emoji_by_name(client: Client) -> None:
    gallery, text = client.predict("emoji 4", api_name="/manifold_emoji")
    # No original images in this test (no data set): the point's token decoded at each λ with a model.
    assert [item["caption"] for item in gallery] == ["λ = 1"]
    assert Image.open(_item_path(gallery[0])).size == (SIZE, SIZE)
    assert "**emoji 4**" in text and "no original images" in text and "no model for λ = 0, inf" in text
    # A name not on the map: Gradio's dropdown refuses it (the handler would say "No emoji called ...").
    assert "not in the list of choices" in _error(client, "no such emoji", api_name="/manifold_emoji")


def test_manifold_missing(model_dir: Path, tmp_path: Path) -> None:
    from app_parts.handlers import Explorer
    from app_parts.tab_manifold import ManifoldView

    plot, note = ManifoldView(Explorer(ModelRegistry([model_dir]), tmp_path / "nope.npz")).plot(None)
    assert plot is None and "No precomputed manifold" in note


def test_compare_backbones(client: Client, files: dict[str, Path]) -> None:
    backbones, lambdas, neighbours = client.predict(
        handle_file(files["rgb.png"]), 2, 0, api_name="/compare_backbones"
    )
    assert len(backbones) == len(lambdas) == 1  # one model: it is both rows
    assert "dB" in backbones[0]["caption"] and lambdas[0]["caption"].startswith("λ=1 · ")
    assert "tiny" in neighbours and "emoji" in neighbours


def test_registry_holds_large_models_in_bf16(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app_parts import registry as reg

    monkeypatch.delenv(reg.DTYPE_ENV, raising=False)
    assert ModelRegistry([model_dir]).get().dtype == torch.float32  # a small model: fp32
    monkeypatch.setattr(reg, "BF16_MIN_PARAMETERS", 1)  # every model counts as large
    model = ModelRegistry([model_dir]).get()
    assert model.dtype == torch.bfloat16
    assert model.reconstruct(Image.new("RGB", (32, 32), "red"), steps=2, output_type="pt").isfinite().all()
    monkeypatch.setenv(reg.DTYPE_ENV, "float32")  # the setting wins over the size
    assert ModelRegistry([model_dir]).get().dtype == torch.float32
    monkeypatch.setenv(reg.DTYPE_ENV, "float8")
    with pytest.raises(ValueError, match="REPTOK_DTYPE"):
        ModelRegistry([model_dir]).get()


def test_registry_rows_one_tokenizer_per_backbone_and_per_lambda(model_dir: Path, tmp_path: Path) -> None:
    from app_parts.tabs import budget_line

    base = json.loads((model_dir / "config.json").read_text())

    def make(name: str, method: str, lam: str, sha: str, main: bool = False, steps: int = 400) -> Path:
        config = json.loads(json.dumps(base))
        config["info"] = {"name": name, "backbone_method": method, "main": main, "steps": steps}
        config["encoder"]["cosine_weight"] = lam
        config["backbone_sha256"] = sha
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        return tmp_path / name

    dirs = [
        make("a-clip-lam0", "clip", "0", "c"),
        make("b-dino-lam1", "dino", "1", "d"),
        make("c-clip-laminf", "clip", "inf", "c"),
        make("d-random-lam1", "random", "1", "r"),
        make("main", "clip", "1", "c", main=True, steps=4000),
        make("z-mae-lam0", "mae", "0", "m"),  # not at the main λ: not in the backbone row
    ]
    registry = ModelRegistry(dirs)
    assert registry.default == "main" and registry.labels[0] == "main"  # the main model leads
    assert [e.key for e in registry.backbone_row()] == ["d-random-lam1", "main", "b-dino-lam1"]
    assert [e.key for e in registry.lambda_row()] == ["a-clip-lam0", "main", "c-clip-laminf"]
    # A longer-trained default beside same-budget ablations: its twin (same backbone, same λ) stands in.
    registry = ModelRegistry([*dirs, make("e-clip-lam1", "clip", "1", "c")])
    assert registry.default == "main"
    assert [e.key for e in registry.backbone_row()] == ["d-random-lam1", "e-clip-lam1", "b-dino-lam1"]
    assert [e.key for e in registry.lambda_row()] == ["a-clip-lam0", "e-clip-lam1", "c-clip-laminf"]
    # The tab says what its tiles are: equal 400-step budgets, the 4,000-step default through its twin.
    assert budget_line(registry) == (
        "Every tokenizer here trained for the same 400 stage-A steps (equal budgets). The default model"
        " `main` (4,000 steps) is compared through `e-clip-lam1`, its same-budget twin (same backbone and λ);"
        " its own reconstruction is in the Reconstruct tab."
    )
    # Without a twin the default itself is in the rows: budgets differ, and the tab claims nothing.
    assert budget_line(ModelRegistry(dirs)) == ""
    # The Backbones tab shows each row side by side: one gallery column per tokenizer, with a CSS rule.
    registry = ModelRegistry([*dirs, make("f-mae-lam1", "mae", "1", "m")])  # 4 backbones, 3 λ
    demo = build_demo(registry, manifold_path=tmp_path / "none.npz")
    rows = {b.label: b for b in demo.blocks.values() if type(b).__name__ == "Gallery"}
    by_backbone = rows["One tokenizer per backbone, at the default model's λ"]
    by_lambda = rows["The default model's backbone across λ (∞: frozen token)"]
    assert (by_backbone.columns, by_lambda.columns) == (4, 3)
    for gallery in rows.values():  # every gallery's fixed column count has its grid rule in the CSS
        (cols,) = [c for c in gallery.elem_classes if c.startswith("cols-")]
        assert f".{cols} .grid-container {{ grid-template-columns: repeat({gallery.columns}," in CSS


# ------------------------------------------------------------------------------- concurrency

USERS, CALLS_EACH, BURSTS = 8, 3, 4


def test_concurrent_users_get_whole_answers(client: Client, files: dict[str, Path], tmp_path: Path) -> None:
    """8 users at once, each sending 3 identical reconstructions (same image, same seed): every answer
    arrives whole. Identical outputs used to share one file in Gradio's cache, rewritten by the next
    request while an earlier one's client was downloading it (app_parts/outputs.py says how); before
    the fix, 12 of the 96 calls of these 4 bursts failed."""
    users = [Client(client.src, verbose=False, download_files=tmp_path / f"user{i}") for i in range(USERS)]

    def user(c: Client) -> list[tuple[str, ...] | BaseException]:
        jobs = [
            c.submit(handle_file(files["rgb.png"]), "tiny", 2, 7, api_name="/reconstruct")
            for _ in range(CALLS_EACH)
        ]
        answers: list[tuple[str, ...] | BaseException] = []
        for job in jobs:
            try:
                answers.append(tuple(job.result(timeout=60)))
            except Exception as err:  # collected, so one failure does not hide the others
                answers.append(err)
        return answers

    answers: list[tuple[str, ...] | BaseException] = []
    with ThreadPoolExecutor(USERS) as pool:
        for _ in range(BURSTS):
            answers += [a for batch in pool.map(user, users) for a in batch]
    failed = [repr(a) for a in answers if isinstance(a, BaseException)]
    assert not failed, f"{len(failed)} of {len(answers)} calls failed: {failed[:3]}"
    reconstructions = set()
    for original, recon, heat, _summary in answers:  # type: ignore[misc]
        for path, size in ((original, SIZE), (recon, SIZE), (heat, 4 * SIZE)):
            with Image.open(path) as image:
                image.load()  # raises on a truncated file
                assert image.size == (size, size)
        reconstructions.add(Path(recon).read_bytes())
    assert len(reconstructions) == 1  # same image, same seed: the same reconstruction, every time
    # On the server, each answer's files are its own: a folder per request, not a path named by content.
    raw = Client(client.src, verbose=False, download_files=False)  # answers name the server's files
    folders = set()
    for _ in range(2):
        *images, _summary = raw.predict(handle_file(files["rgb.png"]), "tiny", 2, 7, api_name="/reconstruct")
        folders |= {Path(image["path"]).parent for image in images}
    assert len(folders) == 2 and all(folder.parent.name == "reptok-explorer" for folder in folders)


def test_output_files_are_written_whole_or_not_at_all(tmp_path: Path) -> None:
    from app_parts import outputs

    first, second = outputs.request_dir(tmp_path), outputs.request_dir(tmp_path)
    assert first != second and first.parent == second.parent == tmp_path  # a folder per request
    path = outputs.write_atomically(
        first / "a.png", lambda file: Image.new("RGB", (4, 4), (1, 2, 3)).save(file, "PNG")
    )
    assert Image.open(path).getpixel((0, 0)) == (1, 2, 3)

    def disk_full(file: object) -> None:
        file.write(b"half an image")  # type: ignore[attr-defined]
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        outputs.write_atomically(first / "b.png", disk_full)
    assert [p.name for p in first.iterdir()] == ["a.png"]  # no partial b.png, no temporary file


def test_phone_photo_upload(client: Client, tmp_path: Path) -> None:
    """A 48-megapixel JPEG, as a phone takes it, goes through the app (decoded at a reduced scale)."""
    photo = tmp_path / "phone.jpg"
    small = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(small).resize((8000, 6000), Image.Resampling.BILINEAR).save(photo, quality=85)
    original, recon, _heat, summary = client.predict(
        handle_file(photo), "tiny", 1, 0, api_name="/reconstruct"
    )
    assert Image.open(original).size == Image.open(recon).size == (SIZE, SIZE)
    assert "PSNR" in summary


# ------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("text.png", "not an image"),
        ("empty.png", "empty"),
        ("truncated.png", "truncated or corrupted"),
        ("bomb.png", "pixels"),
    ],
)
def test_bad_uploads(client: Client, files: dict[str, Path], name: str, message: str) -> None:
    text = _error(client, handle_file(files[name]), "tiny", 1, 0, api_name="/reconstruct")
    assert message in text.lower()


@pytest.mark.parametrize(
    "name",
    [
        "tiny1x1.png", "wide4000x10.png", "grey16.png", "cmyk.jpg", "palette.png",
        "transparent.png", "animated.gif", "rotated.jpg",
    ],
)  # fmt: skip
def test_odd_images_work(client: Client, files: dict[str, Path], name: str) -> None:
    original, *_ = client.predict(handle_file(files[name]), "tiny", 1, 0, api_name="/reconstruct")
    assert Image.open(original).size == (SIZE, SIZE)


def test_bad_text_and_numbers(client: Client) -> None:
    args = ("tiny", 1.5, 0.3, 0.9, 1, 0, 1)
    assert "Please enter a prompt." in _error(client, "   ", *args, api_name="/sample_text")
    assert "class" in _error(client, "No Such Class", *args, api_name="/sample_class").lower()
    # Out of range through the API: Gradio's sliders refuse it with a message naming the bound ...
    assert "greater than maximum value 10" in _error(
        client, CLASS_NAMES[0], "tiny", 99, 0.3, 0.9, 1, 0, 1, api_name="/sample_class"
    )
    assert "less than minimum value 0" in _error(
        client, CLASS_NAMES[0], "tiny", 1.5, 0.3, 0.9, 1, -7, 1, api_name="/sample_class"
    )
    # ... a reversed guidance interval is swapped ...
    assert len(client.predict(CLASS_NAMES[0], "tiny", 1.5, 0.9, 0.1, 1, 0, 1, api_name="/sample_class")) == 1


def test_handlers_clamp(model_dir: Path, tmp_path: Path) -> None:
    """... and the handlers clamp whatever reaches them anyway (steps 1..100, n 1..16, cfg 0..10, seed ≥ 0)."""
    from app_parts.handlers import Explorer

    explorer = Explorer(ModelRegistry([model_dir]), tmp_path / "none.npz")
    assert len(explorer.sample_class(CLASS_NAMES[0], None, 99, 1.5, -2, 0, -7, 500)) == 16
    assert len(explorer.sample_class(CLASS_NAMES[0], None, -1, 0, 1, 1e9, 0, -3)) == 1
    with pytest.raises(gr.Error, match="Steps must be a finite number"):
        explorer.sample_class(CLASS_NAMES[0], None, 1, 0, 1, float("nan"), 0, 1)


def test_no_models(tmp_path: Path) -> None:
    from app_parts.handlers import Explorer

    explorer = Explorer(ModelRegistry([]), tmp_path / "none.npz")
    with pytest.raises(gr.Error, match="No RepTok model"):
        explorer.sample_class("x", None, 1, 0, 1, 1, 0, 1)
    assert isinstance(build_demo(ModelRegistry([])), gr.Blocks)


# ------------------------------------------------------------------------------- manifold library


def test_manifold_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(10, 8)).astype(np.float32)
    xy = fit_2d(tokens)  # N < 15: PCA
    assert xy.shape == (10, 2) and np.isfinite(xy).all()
    assert nearest(tokens[3], tokens, 3)[0] == 3
    assert np.allclose(place(tokens[3], tokens, xy, k=1), xy[3])
    path = save_manifold(
        tmp_path / "m.npz", names=list("abcdefghij"), categories=["x"] * 10,
        settings={"0": {"xy": xy, "tokens": tokens}, "inf": {"xy": xy, "tokens": tokens}},
        model_tokens={"emoji · dino/λ=1": tokens[:, :4]},
    )  # fmt: skip
    m = load_manifold(path)
    assert list(m.settings) == ["0", "inf"] and m.names[2] == "c"
    assert m.settings["inf"]["tokens"].dtype == np.float16
    assert list(m.model_tokens) == ["emoji · dino/λ=1"]
    assert np.allclose(m.model_tokens["emoji · dino/λ=1"], tokens[:, :4], atol=1e-2)
    assert m.setting_models == {}
    with pytest.raises(ValueError, match="label"):
        save_manifold(tmp_path / "bad.npz", names=["a"], categories=["x"], settings={"../x": {}})
    # Which model's tokens a setting holds: kept per λ; a λ with none stays out.
    settings = {"0": {"xy": xy, "tokens": tokens}, "inf": {"xy": xy, "tokens": tokens}}
    path = save_manifold(
        tmp_path / "m2.npz", names=list("abcdefghij"), categories=["x"] * 10, settings=settings,
        setting_models={"0": "emoji-lam0"},
    )  # fmt: skip
    assert load_manifold(path).setting_models == {"0": "emoji-lam0"}
    with pytest.raises(ValueError, match="not in the file"):
        save_manifold(
            tmp_path / "bad.npz", names=list("abcdefghij"), categories=["x"] * 10, settings=settings,
            setting_models={"1": "emoji"},
        )  # fmt: skip


@pytest.mark.slow
def test_fit_2d_umap() -> None:
    tokens = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    assert fit_2d(tokens, seed=0).shape == (30, 2)


def test_about_describes_the_loaded_models(model_dir: Path) -> None:
    from app import _about

    text = _about(ModelRegistry([model_dir]))
    assert "| tiny |" in text and "32×32 pixels" in text and "VAE" not in text.split("## Your own models")[0]
    assert "| class, text |" in text  # what the sampling tabs offer it for


# ------------------------------------------------------------------------------- held-out metrics line

FULL_METRICS = {
    "n": 579, "psnr": 16.08, "ssim": 0.523, "identification": 0.6218, "identification_chance": 1 / 579,
    "token_effective_rank": 12.3, "token_dim": 192, "ridge_probe_psnr": 15.94, "ridge_probe_ssim": 0.48,
    "ridge_probe_identification": 0.512, "cos_to_frozen": 0.97, "decode_steps": 8,
    "unseen_style": ["fluent"], "unseen_style_n": 177, "unseen_style_psnr": 15.21,
    "unseen_style_ssim": 0.5, "unseen_style_identification": 0.58,
}  # fmt: skip


def test_held_out_text_full() -> None:
    from app_parts.imaging import held_out_text

    assert held_out_text(FULL_METRICS) == (
        "Held-out emoji (n = 579, 8 steps): identification 62 % (chance 0.2 %) · 16.1 dB · SSIM 0.52 · "
        "ridge probe 15.9 dB / 51 % · token effective rank 12 of 192 · "
        "unseen style (fluent, n = 177): 58 % · 15.2 dB"
    )


def test_held_out_text_old_partial_and_empty() -> None:
    from app_parts.imaging import held_out_text

    assert (
        held_out_text({"n": 386, "psnr": 10.93, "ssim": 0.1756})
        == "Held-out emoji (n = 386): 10.9 dB · SSIM 0.18"
    )
    assert held_out_text({}) == ""
    assert held_out_text({"n": 386, "decode_steps": 8, "model": "x"}) == ""  # nothing measured: no line
    # Not finite, not numbers, or only part of a group: left out, never "nan"; chance defaults to 1/n.
    odd = {"n": 100, "psnr": float("nan"), "ssim": "0.5", "identification": 0.5, "ridge_probe_psnr": None,
           "ridge_probe_identification": 0.25, "token_effective_rank": 7.0, "unseen_style_psnr": 9.0}  # fmt: skip
    text = held_out_text(odd)
    assert text == (
        "Held-out emoji (n = 100): identification 50 % (chance 1 %) · ridge probe 25 % · "
        "token effective rank 7 · unseen style: 9.0 dB"
    )
    assert "nan" not in text.lower() and "None" not in text


def test_reconstruct_shows_the_models_held_out_metrics(
    model_dir: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    from app_parts.handlers import Explorer

    *_, summary = Explorer(ModelRegistry([model_dir]), tmp_path / "none.npz").reconstruct(
        str(files["rgb.png"]), "tiny", 1, 0
    )
    assert "Held-out emoji" not in summary  # no metrics.json: no line
    measured = shutil.copytree(model_dir, tmp_path / "measured")
    (measured / "metrics.json").write_text(json.dumps(FULL_METRICS))
    registry = ModelRegistry([measured])
    *_, summary = Explorer(registry, tmp_path / "none.npz").reconstruct(str(files["rgb.png"]), "tiny", 1, 0)
    assert "PSNR" in summary and "Held-out emoji (n = 579, 8 steps): identification 62 %" in summary
    assert registry.entry("tiny").metrics["n"] == 579  # read once, with the model


# ------------------------------------------------------------------------------- manifold across λ


def _manifold(
    path: Path, lams: list[str], dim: int, n: int = 12, owners: dict[str, str] | None = None
) -> Path:
    rng = np.random.default_rng(len(lams))
    tokens = rng.normal(size=(n, dim)).astype(np.float32)
    settings = {
        lam: {"xy": rng.normal(size=(n, 2)).astype(np.float32), "tokens": tokens + 0.1 * i}
        for i, lam in enumerate(lams)
    }
    names, cats = [f"emoji {i}" for i in range(n)], [CLASS_NAMES[i % 3] for i in range(n)]
    return save_manifold(path, names=names, categories=cats, settings=settings, setting_models=owners)


def _view(model_dir: Path, manifold: Path, images: Path | None = None) -> object:
    from app_parts.handlers import Explorer
    from app_parts.tab_manifold import HeldOutImages, ManifoldView

    return ManifoldView(Explorer(ModelRegistry([model_dir]), manifold), HeldOutImages(images))


@pytest.mark.parametrize(
    ("lams", "rows"), [(["1"], 1), (["0", "1", "inf"], 1), (["0", "0.01", "0.1", "1", "10", "inf"], 2)]
)
def test_small_multiples(
    model_dir: Path, files: dict[str, Path], tmp_path: Path, lams: list[str], rows: int
) -> None:
    dim = RepTok.from_pretrained(model_dir).token_dim
    view = _view(model_dir, _manifold(tmp_path / "m.npz", lams, dim))
    fig, note = view.plot(str(files["rgb.png"]))  # type: ignore[attr-defined]
    # One panel per setting, in the file's order, at most 4 to a row.
    assert [a.text for a in fig.layout.annotations] == [f"λ = {lam}" for lam in lams]
    axes = sorted({t.xaxis for t in fig.data})
    assert len(axes) == len(lams) and fig.layout.height == 340 * rows + 90  # 4 panels to a row
    # A category has one colour, the same in every panel, and one legend entry that toggles them all.
    points = [t for t in fig.data if t.name != "your image"]
    colours: dict[str, set[str]] = {}
    for t in points:
        colours.setdefault(t.name, set()).add(t.marker.color)
        assert t.legendgroup == t.name
    assert sorted(colours) == sorted(CLASS_NAMES) and all(len(c) == 1 for c in colours.values())
    assert len({c.pop() for c in colours.values()}) == len(CLASS_NAMES)  # different categories differ
    assert sorted(t.name for t in points if t.showlegend) == sorted(CLASS_NAMES)
    assert len(points) == len(CLASS_NAMES) * len(lams)
    # Hovering names the emoji (and its category); a click reads the point's index (customdata).
    for t in points:
        assert list(t.text) == [f"emoji {i}" for i in t.customdata]
        assert "%{text}" in t.hovertemplate and t.name in t.hovertemplate
    # The upload lands in every panel (one legend entry), with its neighbours listed per λ.
    stars = [t for t in fig.data if t.name == "your image"]
    assert sorted(t.xaxis for t in stars) == axes and sum(bool(t.showlegend) for t in stars) == 1
    assert [line.split("**")[1] for line in note.splitlines() if line.startswith("- **λ")] == [
        f"λ = {lam}" for lam in lams
    ]


def test_category_colours_fixed_and_spare() -> None:
    from app_parts.tab_manifold import CATEGORY_COLOURS, category_colours

    colours = category_colours(["Flags", "Food & Drink", "zz made up", "Flags", "aa made up"])
    assert colours["Flags"] == CATEGORY_COLOURS["Flags"]  # the same in every manifold file
    assert colours["Food & Drink"] == CATEGORY_COLOURS["Food & Drink"]
    assert len(set(colours.values())) == 4  # unknown categories get spare colours of their own


def test_manifold_emoji_originals_and_click(model_dir: Path, tmp_path: Path) -> None:
    dim = RepTok.from_pretrained(model_dir).token_dim
    images = tmp_path / "emoji.npz"
    np.savez(
        images,
        images=np.stack([np.full((8, 8, 3), v, np.uint8) for v in (10, 20, 30)]),
        name=np.array(["emoji 3", "emoji 3", "emoji 3"]),
        style=np.array(["google", "twitter", "openmoji"]),
        split=np.array(["heldout", "heldout", "train"]),  # only held-out images are shown
    )
    view = _view(model_dir, _manifold(tmp_path / "m.npz", ["0", "1"], dim), images)
    gallery, text = view.show_name("emoji 3")  # type: ignore[attr-defined]
    assert [caption for _, caption in gallery] == ["original (google)", "original (twitter)", "λ = 1"]
    assert Image.open(gallery[0][0]).getpixel((0, 0)) == (10, 10, 10)
    assert "originals from `emoji.npz`" in text and "no model for λ = 0" in text
    # A click: "<index> <time>" from the page's script; the dropdown follows the clicked emoji.
    gallery, text, dropdown = view.show_point("3 1700000000000")  # type: ignore[attr-defined]
    assert [caption for _, caption in gallery][-1] == "λ = 1" and dropdown["value"] == "emoji 3"
    assert view.show_point("junk") == (gr.skip(),) * 3  # type: ignore[attr-defined]


def test_manifold_decodes_a_point_with_the_model_whose_tokens_it_holds(
    model_dir: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    """Two models share λ = 1 (the default and its same-budget twin, say): the map's λ = 1 tokens are
    the twin's, so the twin decodes a clicked point and places an upload, not the first model."""
    from app_parts.handlers import Explorer
    from app_parts.tab_manifold import HeldOutImages, ManifoldView

    twin = RepTok.from_pretrained(model_dir)
    randomize_(twin.decoder, seed=3)
    twin.config.info = {"name": "twin"}
    twin.save_pretrained(tmp_path / "twin", dtype=torch.float32)
    path = _manifold(tmp_path / "m.npz", ["1"], twin.token_dim, owners={"1": "twin"})
    registry = ModelRegistry([model_dir, tmp_path / "twin"])
    assert registry.by_lambda("1") == "tiny"  # the first model with that λ is not the tokens' model
    view = ManifoldView(Explorer(registry, path), HeldOutImages(None))
    gallery, _ = view.show_name("emoji 3")
    token = torch.from_numpy(load_manifold(path).settings["1"]["tokens"][3:4].astype(np.float32))[:, None]
    shown = np.asarray(Image.open(gallery[0][0]))
    assert np.array_equal(shown, np.asarray(twin.decode(token, seed=0)[0]))
    assert not np.array_equal(shown, np.asarray(RepTok.from_pretrained(model_dir).decode(token, seed=0)[0]))
    _, note = view.plot(str(files["rgb.png"]))
    assert "**λ = 1** (`twin`)" in note


def test_manifold_click_is_wired(model_dir: Path, manifold_path: Path) -> None:
    """gr.Plot reports no clicks: a page-load script hands Plotly's click to a hidden textbox."""
    config = build_demo(ModelRegistry([model_dir]), manifold_path=manifold_path).get_config_file()
    box = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "manifold-click")
    assert box["props"]["visible"] == "hidden"
    assert any("plotly_click" in (d.get("js") or "") for d in config["dependencies"])


# ------------------------------------------------------------------------------- expected seconds


@pytest.mark.parametrize(("steps", "images", "seconds"), [(1, 1, 0.07), (10, 1, 0.25), (10, 4, 1.0)])
def test_decode_speed(steps: int, images: int, seconds: float) -> None:
    from app_parts.registry import DecodeSpeed

    assert DecodeSpeed(encode_s=0.01, step_s=0.02, fixed_s=0.05).decode_s(steps, images) == pytest.approx(
        seconds
    )


def test_expected_time_measured_once_and_lazily(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app_parts import registry as registry_mod
    from app_parts.handlers import Explorer

    calls: list[RepTok] = []

    def fake(model: RepTok) -> registry_mod.DecodeSpeed:
        calls.append(model)
        return registry_mod.DecodeSpeed(encode_s=0.01, step_s=0.02, fixed_s=0.05)

    monkeypatch.setattr(registry_mod, "measure_speed", fake)
    models = ModelRegistry([model_dir])
    build_demo(models)
    assert not calls and models.entry("tiny").model is None  # building the app times and loads nothing
    explorer = Explorer(models, Path("none.npz"))
    assert explorer.estimate_reconstruct("tiny", 10) == (
        "≈ 0.26 s on this machine, then ≈ 1.0 s for the 4 variations"
    )
    assert explorer.estimate_sample("tiny", 10, 16) == "≈ 4.0 s on this machine for 16 images (decoder)"
    assert explorer.estimate_sample(None, 1, 1) == "≈ 0.07 s on this machine for 1 image (decoder)"
    assert len(calls) == 1  # measured once per model
    assert explorer.estimate_sample("tiny", float("nan"), 1) == ""  # a hint: bad values give none
    assert Explorer(ModelRegistry([]), Path("none.npz")).estimate_reconstruct(None, 5) == ""


def test_measure_speed_real_model(model_dir: Path) -> None:
    speed = ModelRegistry([model_dir]).speed("tiny")
    assert speed.encode_s > 0 and speed.step_s > 0 and speed.fixed_s >= 0
