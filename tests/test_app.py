"""The Gradio app's endpoints, driven through its HTTP API with gradio_client, on a tiny random model."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio")
client_mod = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from app import CSS, ModelRegistry, build_demo  # noqa: E402
from reptok.pipeline import RepTok  # noqa: E402
from tests.app_fixtures import SIZE, error, item_path  # noqa: E402
from tests.helpers import CLASS_NAMES  # noqa: E402

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
        return {np.asarray(Image.open(item_path(item))).tobytes() for item in gallery}

    assert len(variations(0.0)) == 1
    assert len(variations(1.0)) == 4
    *_, summary = client.predict(handle_file(files["rgb.png"]), "tiny", 2, 0, 0.5, api_name="/reconstruct")
    assert "decoded in 2 steps from noise scaled by τ = 0.5" in summary
    *_, summary = client.predict(handle_file(files["rgb.png"]), "tiny", 2, 0, api_name="/reconstruct")
    assert "τ = 1" in summary  # no τ given: the slider's start, the model's own default


def test_reconstruct_with_a_refined_token(client: Client, files: dict[str, Path]) -> None:
    """Refinement steps (reptok.inversion) refine the token before decoding, and the summary says so
    and what the encoder's own token gave; the variations decode the same refined token; without the
    setting (an older API call) it is the encoder's token."""
    image = handle_file(files["rgb.png"])
    _, plain, _, summary = client.predict(image, "tiny", 2, 0, 0.5, api_name="/reconstruct")
    assert "refined" not in summary
    _, refined, _, summary = client.predict(image, "tiny", 2, 0, 0.5, 5, api_name="/reconstruct")
    assert "token refined on this image by 5 gradient steps (cos to the encoder's token 0." in summary
    assert "the encoder's token gives" in summary
    assert np.asarray(Image.open(refined)).tobytes() != np.asarray(Image.open(plain)).tobytes()
    same = client.predict(image, "tiny", 2, 0, 0.5, 5, api_name="/variations")
    other = client.predict(image, "tiny", 2, 0, 0.5, api_name="/variations")
    # seed 0 of the variations is the reconstruction itself: same token, same noise
    assert np.array_equal(np.asarray(Image.open(item_path(same[0]))), np.asarray(Image.open(refined)))
    assert np.array_equal(np.asarray(Image.open(item_path(other[0]))), np.asarray(Image.open(plain)))


def test_variations_reuse_the_refined_token(
    model_dir: Path, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The variations chained after a refined reconstruction refine nothing again: the same image,
    model, steps and seed give the token the reconstruction refined; another seed refines anew."""
    from app_parts import handlers
    from app_parts.handlers import Explorer

    calls: list[int] = []
    real = handlers.refine

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(handlers, "refine", counted)
    explorer = Explorer(ModelRegistry([model_dir]), Path("none.npz"))
    image = str(files["rgb.png"])
    _, recon, _, _ = explorer.reconstruct(image, "tiny", 2, 0, 0.5, 5)
    gallery = explorer.variations(image, "tiny", 2, 0, 0.5, 5)
    assert len(calls) == 1
    assert np.array_equal(np.asarray(Image.open(gallery[0][0])), np.asarray(Image.open(recon)))
    explorer.variations(image, "tiny", 2, 1, 0.5, 5)
    assert len(calls) == 2


def test_requests_bring_the_estimates_down(model_dir: Path, files: dict[str, Path]) -> None:
    """Speeds timed beside other work (a page's loading) read long; each decode and refinement a
    request runs gives its own seconds, and the fastest seen is what the estimates use."""
    from app_parts import registry as registry_mod
    from app_parts.handlers import Explorer

    models = ModelRegistry([model_dir])
    explorer = Explorer(models, Path("none.npz"))
    entry = models.entry("tiny")
    entry.refine_step_s = 100.0  # as if timed while the machine was busy
    entry.speed = registry_mod.DecodeSpeed(encode_s=100.0, step_s=100.0, fixed_s=100.0)
    explorer.reconstruct(str(files["rgb.png"]), "tiny", 2, 0, 0.5, 5)
    step, speed = entry.refine_step_s, entry.speed
    assert step is not None and 0 < step < 100.0
    assert 0 < speed.step_s < 100.0 and speed.fixed_s / speed.step_s == 1.0  # scaled down alike
    models.observed_refine_step("tiny", step * 10)  # slower runs later: the fastest is kept
    models.observed_decode("tiny", speed.decode_s(2, 4) * 10, 2, 4)
    assert entry.refine_step_s == step and entry.speed == speed
    assert models.refine_step_s("tiny") == step and models.speed("tiny") == speed  # not timed again


def test_sample_class(client: Client) -> None:
    gallery = client.predict(CLASS_NAMES[1], "tiny", 1.5, 0.3, 0.9, 2, 0, 3, api_name="/sample_class")
    assert len(gallery) == 3
    assert Image.open(item_path(gallery[0])).size == (SIZE, SIZE)


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
            np.asarray(Image.open(item_path(item)))
            for item in client.predict(*args, t, api_name="/sample_class")
        ]
        for t in (0.0, 1.0)
    ]
    assert not np.array_equal(pixels[0][0], pixels[1][0])
    default = client.predict(*args, api_name="/sample_class")
    assert len(default) == 2
    assert "greater than maximum value 1.5" in error(client, *args, 9.0, api_name="/sample_class")


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
    last = np.asarray(Image.open(item_path(strip[-1])).convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(frame).convert("RGB")), last)  # weight 1 -> last frame


def test_interpolate_from_refined_end_tokens(client: Client, files: dict[str, Path]) -> None:
    """With refinement steps, the strip runs between the tokens refined on A and on B: its ends are
    the Reconstruct tab's refined reconstructions (same token, steps and seed), not the encoder's."""

    def ends(refine_steps: int) -> list[bytes]:
        strip, *_ = client.predict(
            handle_file(files["rgb.png"]), handle_file(files["other.png"]), "tiny", 3, "slerp", 2, 4, 0.0,
            refine_steps, api_name="/interpolate",
        )  # fmt: skip
        return [np.asarray(Image.open(item_path(strip[i])).convert("RGB")).tobytes() for i in (0, -1)]

    def reconstruction(name: str, refine_steps: int) -> bytes:
        _, recon, _, _ = client.predict(
            handle_file(files[name]), "tiny", 2, 4, 1.0, refine_steps, api_name="/reconstruct"
        )
        return np.asarray(Image.open(recon).convert("RGB")).tobytes()

    plain, refined = ends(0), ends(5)
    assert plain == [reconstruction("rgb.png", 0), reconstruction("other.png", 0)]
    assert refined == [reconstruction("rgb.png", 5), reconstruction("other.png", 5)]
    assert refined[0] != plain[0] and refined[1] != plain[1]


def test_compare_backbones(client: Client, files: dict[str, Path]) -> None:
    backbones, lambdas, neighbours = client.predict(
        handle_file(files["rgb.png"]), 2, 0, api_name="/compare_backbones"
    )
    assert len(backbones) == len(lambdas) == 1  # one model: it is both rows
    assert "dB" in backbones[0]["caption"] and lambdas[0]["caption"].startswith("λ=1 · ")
    assert "tiny" in neighbours and "emoji" in neighbours


# ------------------------------------------------------------------------------- registry


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
    text = error(client, handle_file(files[name]), "tiny", 1, 0, api_name="/reconstruct")
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
    assert "Please enter a prompt." in error(client, "   ", *args, api_name="/sample_text")
    assert "class" in error(client, "No Such Class", *args, api_name="/sample_class").lower()
    # Out of range through the API: Gradio's sliders refuse it with a message naming the bound ...
    assert "greater than maximum value 10" in error(
        client, CLASS_NAMES[0], "tiny", 99, 0.3, 0.9, 1, 0, 1, api_name="/sample_class"
    )
    assert "less than minimum value 0" in error(
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
    assert explorer.estimates.reconstruct_seconds("tiny", 10) == (
        "≈ 0.26 s on this machine, then ≈ 1.0 s for the 4 variations"
    )
    assert (
        explorer.estimates.sample_seconds("tiny", 10, 16) == "≈ 4.0 s on this machine for 16 images (decoder)"
    )
    assert explorer.estimates.sample_seconds(None, 1, 1) == "≈ 0.07 s on this machine for 1 image (decoder)"
    assert len(calls) == 1  # measured once per model
    assert models.entry("tiny").refine_step_s is None  # refinement is timed only once asked for
    models.entry("tiny").refine_step_s = 0.01
    assert explorer.estimates.reconstruct_seconds("tiny", 10, 25) == (
        "≈ 0.76 s on this machine (0.25 s of it refining the token), then ≈ 1.0 s for the 4 variations"
    )
    assert explorer.estimates.interpolate_seconds("tiny", 8, 10) == "≈ 2.0 s on this machine for 8 frames"
    assert explorer.estimates.interpolate_seconds("tiny", 8, 10, 25) == (
        "≈ 2.5 s on this machine for 8 frames (0.50 s of it refining the end tokens)"
    )
    assert explorer.estimates.sample_seconds("tiny", float("nan"), 1) == ""  # a hint: bad values give none
    assert Explorer(ModelRegistry([]), Path("none.npz")).estimates.reconstruct_seconds(None, 5) == ""


def test_measure_speed_real_model(model_dir: Path) -> None:
    models = ModelRegistry([model_dir])
    speed = models.speed("tiny")
    assert speed.encode_s > 0 and speed.step_s > 0 and speed.fixed_s >= 0
    step = models.refine_step_s("tiny")
    assert step > 0 and models.refine_step_s("tiny") == step  # timed once, then kept
