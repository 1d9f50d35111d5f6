"""The seconds to expect, shown under each button ("≈ 0.1 s on this machine"): from each model's
speed measured once on this machine (ModelRegistry.speed, ModelRegistry.refine_step_s), brought
down by the decodes and refinements that requests run (ModelRegistry.observed_decode,
observed_refine_step): a first timing beside a page's loading reads long."""

from __future__ import annotations

import logging
from collections.abc import Callable

import gradio as gr

from app_parts import imaging
from app_parts.registry import ModelRegistry

log = logging.getLogger("reptok.app")
MAX_IMAGES = 16  # the sampling tabs' largest batch
MAX_REFINE_STEPS = 100


def steps_value(value: object) -> int:
    return imaging.clamp_int(value, "steps", 1, 100)


def refine_value(value: object) -> int:
    """Token refinement steps from the slider; None (an API call without it) is 0: the encoder's token."""
    return 0 if value is None else imaging.clamp_int(value, "refinement steps", 0, MAX_REFINE_STEPS)


def seconds_text(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class Estimates:
    """The hints' texts; each is "" where there is no model, a bad value or a model that fails.
    (Named *_seconds: Gradio names an event after its function, and `reconstruct` is the button's API.)"""

    def __init__(self, models: ModelRegistry) -> None:
        self.models = models

    def reconstruct_seconds(
        self, model_label: str | None, steps: float, refine_steps: float | None = 0
    ) -> str:
        """The Reconstruct button: encode (and refine the token) and decode, then the 4 variations
        (of the same token: the handler keeps it). Refinement is timed only once asked for (on first
        use per model); with it, the encoder's own token is decoded too, for the comparison."""

        def text() -> str:
            speed, n, r = self.models.speed(model_label), steps_value(steps), refine_value(refine_steps)
            refining = r * self.models.refine_step_s(model_label) if r else 0.0
            first = speed.encode_s + refining + speed.decode_s(n, images=2 if r else 1)
            rest = speed.encode_s + speed.decode_s(n, images=4)
            also = f" ({seconds_text(refining)} of it refining the token)" if r else ""
            return f"≈ {seconds_text(first)} on this machine{also}, then ≈ {seconds_text(rest)} for the 4 variations"

        return self._estimate(text)

    def interpolate_seconds(
        self, model_label: str | None, frames: float, steps: float, refine_steps: float | None = 0
    ) -> str:
        """The Interpolate button: encode A and B (and refine each end token), decode the frames."""

        def text() -> str:
            speed, r = self.models.speed(model_label), refine_value(refine_steps)
            n = imaging.clamp_int(frames, "number of frames", 2, MAX_IMAGES)
            refining = 2 * r * self.models.refine_step_s(model_label) if r else 0.0
            total = 2 * speed.encode_s + refining + speed.decode_s(steps_value(steps), images=n)
            also = f" ({seconds_text(refining)} of it refining the end tokens)" if r else ""
            return f"≈ {seconds_text(total)} on this machine for {n} frames{also}"

        return self._estimate(text)

    def sample_seconds(self, model_label: str | None, steps: float, count: float) -> str:
        """A Sample button: `count` images decoded at `steps` steps (the token generator, one token
        per image, is not timed)."""

        def text() -> str:
            n = imaging.clamp_int(count, "number of images", 1, MAX_IMAGES)
            total = self.models.speed(model_label).decode_s(steps_value(steps), images=n)
            return f"≈ {seconds_text(total)} on this machine for {n} image{'s' if n > 1 else ''} (decoder)"

        return self._estimate(text)

    def _estimate(self, text: Callable[[], str]) -> str:
        if not len(self.models):
            return ""
        try:
            return text()
        except (gr.Error, ValueError):
            return ""
        except Exception:
            log.exception("timing a model failed")
            return ""
