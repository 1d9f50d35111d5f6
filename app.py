"""RepTok Explorer: one image, one continuous token. A Gradio app over the `reptok` library.

    python app.py                                  # models from assets/models/ and $REPTOK_MODELS_DIR
    REPTOK_MODELS_DIR=runs/dev python app.py       # e.g. models made with `python -m reptok init`

The tabs are laid out here; what they do is in app_parts/handlers.py, the model registry in
app_parts/registry.py, image helpers (heat map, PSNR/SSIM, GIF) in app_parts/imaging.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from gradio.data_classes import ImageData

from app_parts.handlers import MAX_IMAGES, MAX_PROMPT_CHARS, Explorer
from app_parts.imaging import HELD_OUT_HELP
from app_parts.registry import MODELS_ENV, NO_MODEL_MESSAGE, ModelRegistry

__all__ = ["CSS", "ModelRegistry", "build_demo"]

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "assets" / "examples"
MANIFOLD_ENV = "REPTOK_MANIFOLD"  # a manifold.npz written by train/export.py, instead of the shipped one
MANIFOLD_PATH = ROOT / "assets" / "manifold.npz"
MODEL_CARD = ROOT / "MODEL_CARD.md"
PROMPT_EXAMPLES = ["red apple", "smiling face with sunglasses", "blue car", "red heart"]
# Model outputs are small (32-64 px): show them as crisp pixels, not a blur.
CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
.pixel-out img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
/* Gradio shrinks a gallery's grid to its item count, so one image would fill the whole row. */
.cols-4 .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)) !important; }
.cols-8 .grid-container { grid-template-columns: repeat(8, minmax(0, 1fr)) !important; }
.help-text { font-size: 0.85em; opacity: 0.8; }
"""


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


def _gallery(label: str, columns: int = 4) -> gr.Gallery:
    """An output grid of pixel images at a fixed number of columns (4 or 8: see CSS)."""
    return gr.Gallery(
        label=label,
        columns=columns,
        height="auto",
        format="png",
        elem_classes=["pixelated", f"cols-{columns}"],
    )


def _image_input(label: str) -> gr.Image:
    image = gr.Image(label=label, type="filepath", sources=["upload", "clipboard"], height=260)
    # Set on the instance, not in a gr.Image subclass: Gradio's component metaclass writes a .pyi
    # stub next to the module of every subclass (a stray file, and a crash on a read-only disk).
    image.preprocess = _path_only_preprocess  # type: ignore[method-assign]
    return image


def _examples() -> list[str]:
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*.png"))[:24] if EXAMPLES_DIR.is_dir() else []


def _model_dropdown(models: ModelRegistry) -> gr.Dropdown:
    return gr.Dropdown(
        models.choices(), value=models.default, label="Tokenizer", interactive=bool(len(models))
    )


def _decoder_steps(models: ModelRegistry) -> gr.Slider:
    """The decoder's flow steps, starting at the default model's setting."""
    steps = models.entry(None).config.sampling.decode_steps if len(models) else 25
    return gr.Slider(1, 100, value=steps, step=1, label="Decoder steps")


def _notice(models: ModelRegistry) -> None:
    """Every tab says how to get a model when there is none."""
    if not len(models):
        gr.Markdown(f"⚠️ {NO_MODEL_MESSAGE}")


def _class_names(models: ModelRegistry, label: str | None) -> list[str]:
    if not len(models):
        return []
    config = models.entry(label).config
    return [*(config.class_groups or {}), *(config.class_names or [])]  # groups (categories) first


def _sampling_controls(models: ModelRegistry) -> list[Any]:
    """cfg, interval lo/hi, steps, seed, n: shared by the class and text tabs."""
    sampling = models.entry(None).config.sampling if len(models) else None
    lo, hi = sampling.cfg_interval if sampling else (0.3, 0.9)
    with gr.Row():
        cfg = gr.Slider(0, 10, value=sampling.cfg_scale if sampling else 1.5, step=0.1, label="CFG scale")
        n = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Number of images")
    with gr.Row():
        lo_s = gr.Slider(0, 1, value=lo, step=0.05, label="Guidance from t =")
        hi_s = gr.Slider(0, 1, value=hi, step=0.05, label="Guidance until t =")
    with gr.Row():
        steps = _decoder_steps(models)
        seed = gr.Number(0, label="Seed", precision=0, minimum=0)
    return [cfg, lo_s, hi_s, steps, seed, n]


def _about(models: ModelRegistry) -> str:
    parts = ["## Loaded tokenizers\n"]
    if len(models):
        parts.append("| name | backbone | λ | parameters | image size | folder |\n|---|---|---|---|---|---|")
        for e in models.entries.values():
            size = e.config.decoder.input_size
            space = (
                f"{size}×{size} pixels"
                if e.config.image_space.kind == "pixel"
                else f"{size}×{size} latent (VAE)"
            )
            parts.append(
                f"| {e.key} | `{e.backbone}` | {e.lam} | {e.parameter_count() / 1e6:.2f} M | {space} | `{e.path.name}` |"
            )
    else:
        parts.append(NO_MODEL_MESSAGE)
    if models.problems:
        parts.append("\n**Folders that could not be read:**\n" + "\n".join(f"- {p}" for p in models.problems))
    parts.append(
        f"""
## Your own models

A model is a folder with `config.json` and `*.safetensors`, written by
`RepTok.save_pretrained` (or the scripts in `train/`). The app loads every folder in
`assets/models/` and every folder named in `{MODELS_ENV}` (several separated by `{os.pathsep}`;
each may be a model folder or a folder of model folders):

```bash
{MODELS_ENV}=runs/export/models {MANIFOLD_ENV}=runs/export/manifold.npz python app.py
```

(`train/export.py --out runs/export` writes both: fp16 weights and the held-out tokens' map.)

Real pre-trained backbones (DINOv2, MAE, CLIP through timm, the SD-VAE through diffusers)
need the Hugging Face hub once: build the model with a preset such as `dinov2-b14-reg`,
train or fine-tune it with `train/`, save it with `save_pretrained`, and point `{MODELS_ENV}` at it.
Without training, `python -m reptok init --out runs/dev/tiny` makes a random model to try the app
with (its pictures are noise).
"""
    )
    if MODEL_CARD.is_file():
        parts.append("---\n" + MODEL_CARD.read_text(encoding="utf-8"))
    return "\n".join(parts)


def build_demo(models: ModelRegistry | None = None, *, manifold_path: Path | None = None) -> gr.Blocks:
    """The whole app. `models`: None discovers them (assets/models, $REPTOK_MODELS_DIR)."""
    models = models if models is not None else ModelRegistry()
    app = Explorer(models, manifold_path or Path(os.environ.get(MANIFOLD_ENV) or MANIFOLD_PATH))
    examples = _examples()

    with gr.Blocks(title="RepTok Explorer") as demo:
        gr.Markdown(
            "# RepTok Explorer\nEvery image becomes **one continuous token**: the adapted [cls] output of a "
            "self-supervised ViT, decoded by a flow-matching transformer "
            "([paper](https://arxiv.org/abs/2510.14630))."
        )
        with gr.Tab("Reconstruct", elem_id="tab-reconstruct"):
            _notice(models)
            with gr.Row():
                image = _image_input("Image")
                with gr.Column():
                    with gr.Accordion("Settings", open=False):
                        rec_model = _model_dropdown(models)
                        rec_steps = _decoder_steps(models)
                        rec_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                    rec_button = gr.Button("Reconstruct", variant="primary")
            with gr.Row(elem_classes="pixel-out"):
                original = gr.Image(
                    label="Original (model size)", format="png", interactive=False, height=256
                )
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
            variations = _gallery("Variations: the same token, 4 decoder seeds")
            if examples:
                gr.Examples(examples, inputs=[image], label="Examples")
            rec_inputs = [image, rec_model, rec_steps, rec_seed]
            gr.on(
                [rec_button.click, image.upload],
                app.reconstruct,
                rec_inputs,
                [original, recon, heat, summary],
                api_name="reconstruct",
            ).success(app.variations, rec_inputs, variations, api_name="variations")

        with gr.Tab("Class sampling", elem_id="tab-class-sampling"):
            _notice(models)
            with gr.Row():
                with gr.Column():
                    names = _class_names(models, models.default)
                    cls_name = gr.Dropdown(names, value=names[0] if names else None, label="Class")
                    with gr.Accordion("Settings", open=False):
                        cls_controls = _sampling_controls(models)
                    cls_model = _model_dropdown(models)
                    cls_button = gr.Button("Sample", variant="primary")
                cls_gallery = _gallery("Samples")
            cls_model.change(
                lambda label: gr.Dropdown(choices=_class_names(models, label), value=None),
                cls_model,
                cls_name,
                api_visibility="private",
            )
            cls_button.click(
                app.sample_class, [cls_name, cls_model, *cls_controls], cls_gallery, api_name="sample_class"
            )

        with gr.Tab("Text prompts", elem_id="tab-text-prompts"):
            _notice(models)
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="Prompt", placeholder="red apple", max_length=MAX_PROMPT_CHARS)
                    with gr.Accordion("Settings", open=False):
                        txt_model = _model_dropdown(models)
                        txt_controls = _sampling_controls(models)
                    txt_button = gr.Button("Sample", variant="primary")
                txt_gallery = _gallery("Samples")
            gr.Examples([[p] for p in PROMPT_EXAMPLES], inputs=[prompt], label="Prompts")
            gr.on(
                [txt_button.click, prompt.submit],
                app.sample_text,
                [prompt, txt_model, *txt_controls],
                txt_gallery,
                api_name="sample_text",
            )

        with gr.Tab("Interpolation", elem_id="tab-interpolation"):
            _notice(models)
            with gr.Row():
                image_a, image_b = _image_input("Image A"), _image_input("Image B")
                with gr.Column():
                    with gr.Accordion("Settings", open=False):
                        int_model = _model_dropdown(models)
                        int_frames = gr.Slider(2, MAX_IMAGES, value=8, step=1, label="Frames")
                        int_mode = gr.Radio(["slerp", "lerp"], value="slerp", label="Path")
                        int_steps = _decoder_steps(models)
                        int_seed = gr.Number(
                            0, label="Seed (one decoder noise for every frame)", precision=0, minimum=0
                        )
                    int_button = gr.Button("Interpolate", variant="primary")
            if len(examples) >= 2:
                pairs = [[a, b] for a, b in zip(examples[0::2], examples[1::2], strict=False)][:8]
                gr.Examples(pairs, inputs=[image_a, image_b], label="Example pairs")
            strip = _gallery("A → B", columns=8)
            with gr.Row():
                with gr.Column():
                    weight = gr.Slider(0, 1, value=0.5, step=0.01, label="Weight (0 = A, 1 = B)")
                    frame = gr.Image(
                        label="Frame at the weight", format="png", height=256, elem_classes="pixel-out"
                    )
                gif = gr.File(label="Animated GIF")
            frames_state = gr.State([])
            int_button.click(
                app.interpolate,
                [image_a, image_b, int_model, int_frames, int_mode, int_steps, int_seed, weight],
                [strip, gif, frame, frames_state],
                api_name="interpolate",
            )
            weight.change(app.frame_at, [frames_state, weight], frame, api_visibility="private")

        with gr.Tab("Latent manifold", elem_id="tab-latent-manifold"):
            settings = app.manifold_settings()
            with gr.Row():
                main_lam = models.entry(None).lam if len(models) else None  # the default model's λ first
                first = main_lam if main_lam in settings else (settings[0] if settings else None)
                lam = gr.Radio(settings, value=first, label="Cosine weight λ")
                man_image = _image_input("Place an image on the map (optional)")
            if examples:
                gr.Examples(examples, inputs=[man_image], label="Examples")
            plot = gr.Plot(label="Held-out tokens in 2-D (UMAP, cosine)")
            man_note = gr.Markdown()
            gr.on(
                [demo.load, lam.change, man_image.change],
                app.manifold_plot,
                [lam, man_image],
                [plot, man_note],
                api_name="manifold",
            )

        with gr.Tab("Backbones", elem_id="tab-backbones"):
            _notice(models)
            with gr.Row():
                bb_image = _image_input("Image")
                with gr.Column():
                    with gr.Accordion("Settings", open=False):
                        bb_steps = _decoder_steps(models)
                        bb_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                    bb_button = gr.Button("Compare", variant="primary")
            bb_gallery = _gallery("One tokenizer per backbone, at the default model's λ")
            bb_lambdas = _gallery("The default model's backbone across λ (∞: frozen token)")
            bb_neighbours = gr.Markdown()
            if examples:
                gr.Examples(examples, inputs=[bb_image], label="Examples")
            bb_button.click(
                app.compare_backbones,
                [bb_image, bb_steps, bb_seed],
                [bb_gallery, bb_lambdas, bb_neighbours],
                api_name="compare_backbones",
            )

        with gr.Tab("About", elem_id="tab-about"):
            gr.Markdown(_about(models))
    return demo


def main() -> None:
    # Two vCPUs on a free Space: one request at a time, using both cores, beats two fighting.
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    demo = build_demo()
    demo.queue(max_size=16, default_concurrency_limit=1).launch(
        max_file_size="10mb",
        allowed_paths=[str(EXAMPLES_DIR)] if EXAMPLES_DIR.is_dir() else None,
        css=CSS,
        # server_name / server_port: Gradio reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT itself.
    )


if __name__ == "__main__":
    main()
