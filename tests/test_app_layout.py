"""What the app's page opens on and says: each tab's opening values and menus, the About tab, the
Reconstruct tab's held-out metrics line. Built with build_demo, no server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

gr = pytest.importorskip("gradio")

from app import ModelRegistry, build_demo  # noqa: E402
from reptok.pipeline import RepTok  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

# ------------------------------------------------------------------------------- opening values and menus


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


def test_clicking_an_example_runs_its_tab(model_dir: Path, tmp_path: Path) -> None:
    """Every tab's examples run the tab's action once they have filled its inputs (a private event:
    the button keeps the API name); the browser test clicks one in the Reconstruct tab."""
    demo = build_demo(ModelRegistry([model_dir]), manifold_path=tmp_path / "none.npz")
    examples = {b._id: b.label for b in demo.blocks.values() if type(b).__name__ == "Dataset"}
    events = {f._id: f for f in demo.fns.values()}
    runs = sorted(
        (examples[events[f.trigger_after].targets[0][0]], f.fn.__name__, f.api_visibility)
        for f in events.values()
        if f.trigger_after is not None and events[f.trigger_after].targets[0][0] in examples
    )
    assert runs == [
        ("Classes", "sample_class", "private"),
        ("Example pairs", "interpolate", "private"),
        ("Examples", "compare_backbones", "private"),
        ("Examples", "reconstruct", "private"),
        ("Prompts", "sample_text", "private"),
    ]  # the Latent manifold tab's examples place the image through its own change event
    api = {f.api_name for f in events.values() if f.api_visibility == "public"}
    assert {"reconstruct", "sample_class", "sample_text", "interpolate", "compare_backbones"} <= api


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


def test_held_out_text_with_refined_tokens() -> None:
    """evaluate.py --refine-steps adds the reconstructions from tokens refined on each image."""
    from app_parts.imaging import held_out_text

    refined = FULL_METRICS | {"refined_steps": 25, "refined_identification": 0.986, "refined_psnr": 20.92}
    assert "· SSIM 0.52 · token refined 25 steps: 99 % / 20.9 dB · ridge probe" in held_out_text(refined)
    assert "refined" not in held_out_text(FULL_METRICS | {"refined_psnr": 20.92})  # steps unknown: left out


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
