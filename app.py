"""RepTok Explorer: one image, one continuous token. A Gradio app over the `reptok` library.

    python app.py                                  # models from assets/models/ and $REPTOK_MODELS_DIR
    REPTOK_MODELS_DIR=runs/dev python app.py       # e.g. models made with `python -m reptok init`
    REPTOK_FETCH_OFFICIAL=1 python app.py          # also fetch the official RepTok-XL, in the background

Here: the page (title, tabs, About) and `main`. Each tab is laid out in app_parts/tabs.py (the
interpolation's and the manifold's in app_parts/tab_interpolation.py and tab_manifold.py), what it
does is in app_parts/handlers.py, the model registry in app_parts/registry.py, the background fetch
of the official model in app_parts/official.py, image helpers (heat map, PSNR/SSIM) in
app_parts/imaging.py, and the files the app serves (written once per request, atomically: why, in
its docstring) in app_parts/outputs.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
import torch

from app_parts import tabs
from app_parts.handlers import Explorer
from app_parts.official import FETCH_ENV, OfficialFetch, fetch_requested, status_line
from app_parts.registry import MODELS_ENV, NO_MODEL_MESSAGE, ModelRegistry
from app_parts.tab_interpolation import interpolation_tab
from app_parts.tab_manifold import manifold_tab
from app_parts.tabs import PROMPT_EXAMPLES
from reptok.images import MAX_FILE_BYTES

__all__ = ["CSS", "PROMPT_EXAMPLES", "ModelRegistry", "build_demo"]

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "assets" / "examples"
MANIFOLD_ENV = "REPTOK_MANIFOLD"  # a manifold.npz written by train/export.py, instead of the shipped one
MANIFOLD_PATH = ROOT / "assets" / "manifold.npz"
MODEL_CARD = ROOT / "MODEL_CARD.md"
CARD_DIR = ROOT / "assets" / "card"  # the model card's pictures, linked as assets/card/<name>.png
_class_names = tabs.class_names  # bench/latency.py reads the Class dropdown's choices through this name
# Gradio shrinks a gallery's grid to its item count, so one image would fill the whole row: each
# gallery fixes its column count (tabs.gallery's cols-N class).
GALLERY_COLUMNS_CSS = "\n".join(
    f".cols-{n} .grid-container {{ grid-template-columns: repeat({n}, minmax(0, 1fr)) !important; }}"
    for n in range(1, tabs.MAX_GALLERY_COLUMNS + 1)
)
# Model outputs are small (32-64 px): show them as crisp pixels, not a blur.
CSS = (
    """
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
.pixel-out img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
.help-text { font-size: 0.85em; opacity: 0.8; }
/* Gradio gives every gallery a 450 px minimum height, which left most of a one-row gallery empty. */
.pixelated .grid-wrap.fixed-height { min-height: 0; }
"""
    + GALLERY_COLUMNS_CSS
    + "\n"
)


def _about(models: ModelRegistry) -> str:
    parts = ["## Loaded tokenizers\n"]
    if len(models):
        parts.append(
            "| name | backbone | λ | samples by | parameters | image size | folder |\n|---|---|---|---|---|---|---|"
        )
        for e in models.entries.values():
            size = e.config.decoder.input_size
            space = (
                f"{size}×{size} pixels"
                if e.config.image_space.kind == "pixel"
                else f"{size}×{size} latent (VAE)"
            )
            samples = ", ".join(can for can in ("class", "text") if e.can(can)) or "– (tokenizer only)"
            parts.append(
                f"| {e.key} | `{e.backbone}` | {e.lam} | {samples} | {e.parameter_count() / 1e6:.2f} M | {space} "
                f"| `{e.path.name}` |"
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

The official RepTok-XL (ImageNet 256 px) is a few GB: `{FETCH_ENV}=1 python app.py` downloads and
converts it in the background while the app serves these models (into the first folder of
`{MODELS_ENV}`, where the next start finds it, else `checkpoints/`), then offers it in the menus.

Real pre-trained backbones (DINOv2, MAE, CLIP through timm, the SD-VAE through diffusers)
need the Hugging Face hub once: build the model with a preset such as `dinov2-b14-reg`,
train or fine-tune it with `train/`, save it with `save_pretrained`, and point `{MODELS_ENV}` at it.
Without training, `python -m reptok init --out runs/dev/tiny` makes a random model to try the app
with (its pictures are noise).
"""
    )
    if MODEL_CARD.is_file():
        # The card links its pictures relative to the repository; in the page they come from the
        # folder that build_demo serves as static files.
        card = MODEL_CARD.read_text(encoding="utf-8")
        parts.append("---\n" + card.replace("](assets/card/", f"](/gradio_api/file={CARD_DIR.as_posix()}/"))
    return "\n".join(parts)


def _examples() -> list[str]:
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*.png"))[:24] if EXAMPLES_DIR.is_dir() else []


def build_demo(
    models: ModelRegistry | None = None,
    *,
    manifold_path: Path | None = None,
    official: OfficialFetch | None = None,
) -> gr.Blocks:
    """The whole app. `models`: None discovers them (assets/models, $REPTOK_MODELS_DIR).
    `official`: a fetch of the official model (started by the caller) whose status line the page
    shows; its model joins the dropdowns when it is done."""
    models = models if models is not None else ModelRegistry()
    gr.set_static_paths([CARD_DIR])  # the About tab's model-card pictures, nothing else
    app = Explorer(models, manifold_path or Path(os.environ.get(MANIFOLD_ENV) or MANIFOLD_PATH))
    examples = _examples()

    with gr.Blocks(title="RepTok Explorer") as demo:
        gr.Markdown(
            "# RepTok Explorer\nEvery image becomes **one continuous token**: the adapted [cls] output of a "
            "self-supervised ViT, decoded by a flow-matching transformer "
            "([paper](https://arxiv.org/abs/2510.14630))."
        )
        status = gr.Column(
            visible=official is not None
        )  # the official model's status line, filled in once the dropdowns exist
        with gr.Tab("Reconstruct", elem_id="tab-reconstruct"):
            dropdowns = [(tabs.reconstruct_tab(demo, app, examples), "reconstruct")]
        with gr.Tab("Class sampling", elem_id="tab-class-sampling"):
            dropdowns.append((tabs.class_sampling_tab(demo, app), "class"))
        with gr.Tab("Text prompts", elem_id="tab-text-prompts"):
            dropdowns.append((tabs.text_prompts_tab(demo, app), "text"))
        with gr.Tab("Interpolation", elem_id="tab-interpolation"):
            dropdowns.append((interpolation_tab(demo, app, examples), "reconstruct"))
        with gr.Tab("Latent manifold", elem_id="tab-latent-manifold"):
            manifold_tab(demo, app, examples)
        with gr.Tab("Backbones", elem_id="tab-backbones"):
            tabs.backbones_tab(app, examples)
        with gr.Tab("About", elem_id="tab-about"):
            gr.Markdown(_about(models))
        with status:
            status_line(demo, models, official, dropdowns)
    return demo


def main() -> None:
    # Two vCPUs on a free Space: one request at a time, using both cores, beats two fighting.
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    models = ModelRegistry()
    official = OfficialFetch(models).start() if fetch_requested() else None
    demo = build_demo(models, official=official)  # serves at once; the official model joins when done
    demo.queue(max_size=16, default_concurrency_limit=1).launch(
        # The library's own cap (20 MB): a 48-megapixel phone JPEG is often 10-20 MB, and
        # reptok.images decodes it at a reduced scale, so the upload limit need not be lower.
        max_file_size=MAX_FILE_BYTES,
        allowed_paths=[str(EXAMPLES_DIR)] if EXAMPLES_DIR.is_dir() else None,
        css=CSS,
        # server_name / server_port: Gradio reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT itself.
    )


if __name__ == "__main__":
    main()
