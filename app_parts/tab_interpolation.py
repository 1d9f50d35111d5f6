"""The "Interpolation" tab: a strip of frames between two images' tokens (slerp or lerp), one decoder
noise for every frame, a slider to pick a frame, and the strip as an animated GIF.

The end tokens are the encoder's by default, as in the paper. The refinement slider fits each to its
own image first (reptok.inversion, as in the Reconstruct tab, which keeps the same refined tokens):
the strip then starts and ends on what the decoder renders closest to A and B.
"""

from __future__ import annotations

import gradio as gr

from app_parts.handlers import MAX_IMAGES, Explorer
from app_parts.tabs import (
    decoder_steps,
    defaults_follow_model,
    expected_time,
    gallery,
    image_input,
    model_dropdown,
    notice,
    opening_images,
    refine_slider,
    run_on_click,
    seed_box,
)

REFINE_LABEL = (
    "Refine the end tokens on A and B: gradient steps on the decoder's loss (0: the encoder's tokens)"
)
REFINE_INFO = (
    "Each end is still one token, fitted to its own image: the strip starts and ends closer to A and B. "
    "The path between them is the same slerp or lerp."
)


def interpolation_tab(demo: gr.Blocks, app: Explorer, examples: list[str]) -> gr.Dropdown:
    models = app.models
    notice(models)
    with gr.Row():
        first, second = opening_images(examples, 2)
        image_a, image_b = image_input("Image A", first), image_input("Image B", second)
        with gr.Column():
            with gr.Accordion("Settings", open=False):
                model = model_dropdown(models)
                frames = gr.Slider(2, MAX_IMAGES, value=8, step=1, label="Frames")
                mode = gr.Radio(["slerp", "lerp"], value="slerp", label="Path")
                steps = decoder_steps(models)
                seed = seed_box("Seed (one decoder noise for every frame)")
            refine_steps = refine_slider(REFINE_LABEL, REFINE_INFO, "interpolation-refine-steps")
            button = gr.Button("Interpolate", variant="primary")
            expected_time(demo, app.estimates.interpolate_seconds, [model, frames, steps, refine_steps])
    defaults_follow_model(model, models, {steps: "decode_steps"})
    strip = gallery("A → B", columns=8)
    with gr.Row():
        with gr.Column():
            weight = gr.Slider(0, 1, value=0.5, step=0.01, label="Weight (0 = A, 1 = B)")
            frame = gr.Image(label="Frame at the weight", format="png", height=256, elem_classes="pixel-out")
        gif = gr.File(label="Animated GIF")
    frames_state = gr.State([])
    inputs = [image_a, image_b, model, frames, mode, steps, seed, weight, refine_steps]
    outputs = [strip, gif, frame, frames_state]
    # Below the outputs, as in the Reconstruct tab: a table of pairs above them pushed the strip off screen.
    pairs = [[a, b] for a, b in zip(examples[0::2], examples[1::2], strict=False)][:8]
    picked = gr.Examples(pairs, inputs=[image_a, image_b], label="Example pairs") if pairs else None
    button.click(app.interpolate, inputs, outputs, api_name="interpolate")
    run_on_click(picked, app.interpolate, inputs, outputs)
    weight.change(app.frame_at, [frames_state, weight], frame, api_visibility="private")
    return model
