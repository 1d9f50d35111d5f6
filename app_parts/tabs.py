"""The explorer's tabs, one builder each, and the controls they share. Layout and wiring only:
what a button does is in handlers.py (the interpolation tab in tab_interpolation.py, the manifold
tab, with its figure, in tab_manifold.py).

Each builder is called inside `gr.Blocks` and `gr.Tab` (app.py) and returns its model dropdown, so
the app can offer a model added while it runs (app_parts/official.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.data_classes import ImageData

from app_parts.estimates import MAX_REFINE_STEPS
from app_parts.handlers import MAX_IMAGES, MAX_PROMPT_CHARS, MAX_TEMPERATURE, Explorer
from app_parts.imaging import HELD_OUT_HELP
from app_parts.registry import NO_MODEL_MESSAGE, Ability, ModelRegistry
from reptok.model_config import Condition, SamplingConfig

PROMPT_EXAMPLES = ["red apple", "smiling face with sunglasses", "blue car", "red heart"]
# Classes of the shipped emoji model whose samples read well (rows of the model card's class grid,
# and the faces' group); the Class tab opens on the first one a model has and lists those it has as
# examples. Alphabetically first would be "Activities", a small group with some of the weakest samples.
CLASS_EXAMPLES = ["face-smiling", "animal-mammal", "food-fruit", "heart", "Smileys & Emotion"]
# Held-out examples the default model reconstructs recognisably (the model card's grid): the image
# tabs open on them, so Reconstruct, Interpolate and Compare answer on a fresh page, as Sample does.
OPENING_EXAMPLES = ["google-grinning_face.png", "google-japan_flag.png"]
# Test-time refinement (reptok.inversion): off by default, so the tab shows RepTok's encoder as published.
REFINE_LABEL = "Refine the token on this image: gradient steps on the decoder's loss (0: the encoder's token)"
REFINE_INFO = (
    "Still one token, but fitted to this image rather than the encoder's one-pass guess: sharper, slower. "
    "What it gives on held-out emoji: the held-out line below, where the model's metrics measured it."
)


def opening_images(examples: list[str], n: int) -> list[str | None]:
    """`n` of the example paths to open the image inputs on: OPENING_EXAMPLES first, then the others
    in order; None (an empty input) where there are fewer than `n`."""
    named = [e for name in OPENING_EXAMPLES for e in examples if Path(e).name == name]
    rest = [e for e in examples if e not in named]
    return [*named, *rest, *[None] * n][:n]


# ------------------------------------------------------------------------------ shared controls


def _path_only_preprocess(payload: ImageData | None) -> str | None:
    """Hand the handler the uploaded file's path without opening it.

    Plain gr.Image(type="filepath") runs PIL.Image.open on the upload before our code sees it,
    so a non-image or a decompression bomb fails inside Gradio with a bare "Error". Here the
    path goes straight to reptok.images.load_image, which checks and explains."""
    if payload is None:
        return None
    if payload.path is None:  # a data: URL instead of an upload
        raise gr.Error("Please upload the image as a file.")
    return str(payload.path)


MAX_GALLERY_COLUMNS = 8  # app.CSS fixes the grid for 1 to this many columns


def one_row(count: int) -> int:
    """Columns that put `count` images side by side in one gallery row (as many as the CSS allows)."""
    return min(max(count, 1), MAX_GALLERY_COLUMNS)


def gallery(label: str, columns: int = 4, height: int | str = "auto") -> gr.Gallery:
    """An output grid of pixel images at a fixed number of columns (1 to MAX_GALLERY_COLUMNS: app.CSS)."""
    return gr.Gallery(
        label=label,
        columns=columns,
        height=height,
        format="png",
        elem_classes=["pixelated", f"cols-{columns}"],
    )


def run_on_click(picked: gr.Examples | None, fn: Callable[..., Any], inputs: list[Any], outputs: Any) -> Any:
    """Once an example has filled the tab's inputs, run the tab's action on them, as a Space's examples
    do (without this a click only fills the inputs). Not gr.Examples(run_on_click=True): that passes the
    example's own columns alone, not the tab's settings. Private: the tab's button is the API endpoint,
    and is wired first, so that it keeps its api_name (Gradio names later events after the function)."""
    if picked is None:  # a tab without examples
        return None
    return picked.load_input_event.then(fn, inputs, outputs, api_visibility="private")


def image_input(label: str, value: str | None = None) -> gr.Image:
    image = gr.Image(label=label, value=value, type="filepath", sources=["upload", "clipboard"], height=260)
    # Set on the instance, not in a gr.Image subclass: Gradio's component metaclass writes a .pyi
    # stub next to the module of every subclass (a stray file, and a crash on a read-only disk).
    image.preprocess = _path_only_preprocess  # type: ignore[method-assign]
    return image


def model_dropdown(models: ModelRegistry, can: Ability = "reconstruct") -> gr.Dropdown:
    """The tab's model menu: the models that can do what the tab does (a tokenizer-only ablation
    row is not offered for sampling), the default model first."""
    return gr.Dropdown(
        models.choices(can), value=models.default_for(can), label="Tokenizer", interactive=bool(len(models))
    )


def decoder_steps(models: ModelRegistry, can: Ability = "reconstruct") -> gr.Slider:
    """The decoder's flow steps, starting at the tab's default model's setting."""
    steps = models.entry(models.default_for(can)).config.sampling.decode_steps if len(models) else 25
    return gr.Slider(1, 100, value=steps, step=1, label="Decoder steps")


def decoder_temperature(models: ModelRegistry) -> gr.Slider:
    """τ, the scale of the decoder's starting noise: 0 gives the one most likely image the flow
    reaches, 1 the model's full spread; starts at the default model's setting."""
    tau = models.entry(None).config.sampling.decode_temperature if len(models) else 1.0
    return gr.Slider(
        0, MAX_TEMPERATURE, value=tau, step=0.05, label="Decoder noise τ (0: no variation, 1: full spread)"
    )


def defaults_follow_model(
    model: gr.Dropdown,
    models: ModelRegistry,
    sliders: dict[gr.Slider, str | Callable[[SamplingConfig], float]],
) -> None:
    """Picking a model sets each slider to that model's own default: a `SamplingConfig` field by name
    (decoder steps: emoji models 4, the official XL 50; τ; the guidance scale; T) or a function of
    it (the guidance interval's ends), as a diffusers pipeline's defaults come with its checkpoint;
    the sliders then override them."""
    getters = [attrgetter(f) if isinstance(f, str) else f for f in sliders.values()]

    def defaults(label: str) -> list[gr.Slider]:
        sampling = models.entry(label).config.sampling
        return [gr.Slider(value=get(sampling)) for get in getters]

    model.change(defaults, model, list(sliders), api_visibility="private")


def refine_slider(label: str, info: str, elem_id: str = "refine-steps") -> gr.Slider:
    """Test-time refinement steps (reptok.inversion); 0, the default, is the encoder's token."""
    return gr.Slider(0, MAX_REFINE_STEPS, value=0, step=5, label=label, info=info, elem_id=elem_id)


def seed_box(label: str = "Seed") -> gr.Number:
    return gr.Number(0, label=label, precision=0, minimum=0)


def notice(models: ModelRegistry) -> None:
    """Every tab says how to get a model when there is none."""
    if not len(models):
        gr.Markdown(f"⚠️ {NO_MODEL_MESSAGE}")


def class_names(models: ModelRegistry, label: str | None) -> list[str]:
    if not len(models):
        return []
    config = models.entry(label).config
    return [*(config.class_groups or {}), *(config.class_names or [])]  # groups (categories) first


def opening_class(names: list[str]) -> str | None:
    """The class a model's menu opens on: the first of CLASS_EXAMPLES it has, else its first."""
    return next((c for c in CLASS_EXAMPLES if c in names), names[0] if names else None)


def sampling_controls(models: ModelRegistry, can: Condition) -> list[Any]:
    """cfg, interval lo/hi, steps, seed, n, generator T: shared by the class and text tabs."""
    label = models.default_for(can)
    sampling = models.entry(label).config.sampling if label is not None else None
    lo, hi = sampling.guidance_interval(can) if sampling else (0.3, 0.9)
    with gr.Row():
        cfg = gr.Slider(0, 10, value=sampling.cfg_scale if sampling else 1.5, step=0.1, label="CFG scale")
        n = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Number of images")
    with gr.Row():
        lo_s = gr.Slider(0, 1, value=lo, step=0.05, label="Guidance from t =")
        hi_s = gr.Slider(0, 1, value=hi, step=0.05, label="Guidance until t =")
    with gr.Row():
        steps = decoder_steps(models, can)
        seed = seed_box()
    temperature = gr.Slider(
        0, MAX_TEMPERATURE, value=sampling.generate_temperature if sampling else 1.0, step=0.05,
        label="Generator noise T (below 1: more typical samples, less variety)",
    )  # fmt: skip
    return [cfg, lo_s, hi_s, steps, seed, n, temperature]


def sampling_defaults_follow_model(
    model: gr.Dropdown, models: ModelRegistry, controls: list[Any], can: Condition
) -> None:
    """`defaults_follow_model` for `sampling_controls`: steps, guidance scale, its interval (this
    tab's generator's) and generator T."""
    cfg, lo, hi, steps, _, _, temperature = controls
    fields: dict[gr.Slider, str | Callable[[SamplingConfig], float]] = {
        steps: "decode_steps",
        cfg: "cfg_scale",
        lo: lambda s: s.guidance_interval(can)[0],
        hi: lambda s: s.guidance_interval(can)[1],
        temperature: "generate_temperature",
    }
    defaults_follow_model(model, models, fields)


def expected_time(
    demo: gr.Blocks, estimate: Callable[..., str], inputs: Sequence[gr.components.Component]
) -> gr.Markdown:
    """The "≈ 0.1 s on this machine" under a button: on page load (which times the default model
    once, ModelRegistry.speed) and whenever the model or a setting it depends on changes."""
    line = gr.Markdown(elem_classes="help-text")
    gr.on(
        [demo.load, *(c.change for c in inputs)],  # type: ignore[attr-defined]
        estimate,
        list(inputs),
        line,
        show_progress="hidden",
        api_visibility="private",
        trigger_mode="always_last",
    )
    return line


# --------------------------------------------------------------------------------------- tabs


def reconstruct_tab(demo: gr.Blocks, app: Explorer, examples: list[str]) -> gr.Dropdown:
    models = app.models
    notice(models)
    with gr.Row():
        image = image_input("Image", opening_images(examples, 1)[0])
        with gr.Column():
            with gr.Accordion("Settings", open=False):
                model = model_dropdown(models)
                steps = decoder_steps(models)
                tau = decoder_temperature(models)
                seed = seed_box()
            refine_steps = refine_slider(REFINE_LABEL, REFINE_INFO)
            button = gr.Button("Reconstruct", variant="primary")
            expected_time(demo, app.estimates.reconstruct_seconds, [model, steps, refine_steps])
    defaults_follow_model(model, models, {steps: "decode_steps", tau: "decode_temperature"})
    with gr.Row(elem_classes="pixel-out"):
        original = gr.Image(label="Original (model size)", format="png", interactive=False, height=256)
        recon = gr.Image(
            label="One-token reconstruction",
            format="png",
            interactive=False,
            elem_id="reconstruction",
            height=256,
        )
        heat = gr.Image(label="Absolute error", format="png", interactive=False, height=256)
    summary = gr.Markdown()
    gr.Markdown(HELD_OUT_HELP, elem_classes="help-text")  # the held-out line's terms
    variations = gallery("Variations: the same token, 4 decoder seeds (how far apart: τ in Settings)")
    inputs, outputs = [image, model, steps, seed, tau, refine_steps], [original, recon, heat, summary]
    picked = gr.Examples(examples, inputs=[image], label="Examples") if examples else None
    gr.on([button.click, image.upload], app.reconstruct, inputs, outputs, api_name="reconstruct").success(
        app.variations, inputs, variations, api_name="variations"
    )
    if (on_click := run_on_click(picked, app.reconstruct, inputs, outputs)) is not None:
        on_click.success(app.variations, inputs, variations, api_visibility="private")
    return model


def class_sampling_tab(demo: gr.Blocks, app: Explorer) -> gr.Dropdown:
    models = app.models
    notice(models)
    with gr.Row():
        with gr.Column():
            names = class_names(models, models.default_for("class"))
            examples = [c for c in CLASS_EXAMPLES if c in names]
            name = gr.Dropdown(names, value=opening_class(names), label="Class")
            with gr.Accordion("Settings", open=False):
                controls = sampling_controls(models, "class")
            model = model_dropdown(models, "class")
            button = gr.Button("Sample", variant="primary")
            expected_time(demo, app.estimates.sample_seconds, [model, controls[3], controls[5]])  # steps, n
        samples = gallery("Samples")
    sampling_defaults_follow_model(model, models, controls, "class")
    picked = gr.Examples([[c] for c in examples], inputs=[name], label="Classes") if examples else None

    def menu_for(label: str | None) -> gr.Dropdown:
        names = class_names(models, label)
        return gr.Dropdown(choices=names, value=opening_class(names))  # not empty: Sample works at once

    model.change(
        menu_for,
        model,
        name,
        api_visibility="private",
    )
    button.click(app.sample_class, [name, model, *controls], samples, api_name="sample_class")
    run_on_click(picked, app.sample_class, [name, model, *controls], samples)
    return model


def text_prompts_tab(demo: gr.Blocks, app: Explorer) -> gr.Dropdown:
    models = app.models
    notice(models)
    with gr.Row():
        with gr.Column():
            # Opens on an example (as the class tab opens on a class): Sample answers at once.
            prompt = gr.Textbox(
                label="Prompt",
                value=PROMPT_EXAMPLES[0],
                placeholder="an emoji's name, e.g. red apple",
                max_length=MAX_PROMPT_CHARS,
            )
            with gr.Accordion("Settings", open=False):
                model = model_dropdown(models, "text")
                controls = sampling_controls(models, "text")
            button = gr.Button("Sample", variant="primary")
            expected_time(demo, app.estimates.sample_seconds, [model, controls[3], controls[5]])  # steps, n
        samples = gallery("Samples")
    sampling_defaults_follow_model(model, models, controls, "text")
    picked = gr.Examples([[p] for p in PROMPT_EXAMPLES], inputs=[prompt], label="Prompts")
    gr.on(
        [button.click, prompt.submit],
        app.sample_text,
        [prompt, model, *controls],
        samples,
        api_name="sample_text",
    )
    run_on_click(picked, app.sample_text, [prompt, model, *controls], samples)
    return model


def budget_line(models: ModelRegistry) -> str:
    """What the Backbones tab's tiles were trained with, so a grid of blobs beside a sharp default
    reconstruction reads as what it is: equal, short budgets (the ablation tables' rows)."""
    if not len(models):
        return ""
    default, twin = models.entry(None), models.comparable()
    steps = {e.config.info.get("steps") for e in [*models.backbone_row(), *models.lambda_row()]}
    parts = []
    if len(steps) == 1 and None not in steps:
        parts.append(
            f"Every tokenizer here trained for the same {steps.pop():,} stage-A steps (equal budgets)."
        )
    if twin is not default:
        trained = default.config.info.get("steps")
        longer = f" ({trained:,} steps)" if trained else ""
        parts.append(
            f"The default model `{default.key}`{longer} is compared through `{twin.key}`, its same-budget"
            " twin (same backbone and λ); its own reconstruction is in the Reconstruct tab."
        )
    return " ".join(parts)


def backbones_tab(app: Explorer, examples: list[str]) -> None:
    notice(app.models)
    if line := budget_line(app.models):
        gr.Markdown(line, elem_classes="help-text")
    with gr.Row():
        image = image_input("Image", opening_images(examples, 1)[0])
        with gr.Column():
            with gr.Accordion("Settings", open=False):
                steps = decoder_steps(app.models)
                seed = seed_box()
            button = gr.Button("Compare", variant="primary")
    # One row each, however many tokenizers ship (five backbones, four λ): side by side.
    by_backbone = gallery(
        "One tokenizer per backbone, at the default model's λ", one_row(len(app.models.backbone_row()))
    )
    by_lambda = gallery(
        "The default model's backbone across λ (∞: frozen token)", one_row(len(app.models.lambda_row()))
    )
    neighbours = gr.Markdown()
    inputs, outputs = [image, steps, seed], [by_backbone, by_lambda, neighbours]
    picked = gr.Examples(examples, inputs=[image], label="Examples") if examples else None
    button.click(app.compare_backbones, inputs, outputs, api_name="compare_backbones")
    run_on_click(picked, app.compare_backbones, inputs, outputs)
