"""What each tab does when asked: plain functions over a ModelRegistry, with errors a person can read."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import gradio as gr
import numpy as np
import torch
from PIL import Image

from app_parts import imaging
from app_parts.registry import NO_MODEL_MESSAGE, ModelRegistry
from reptok.images import ImageLoadError, load_image
from reptok.manifold import Manifold, load_manifold, nearest, place
from reptok.pipeline import RepTok
from reptok.sampling import seeded_noise

log = logging.getLogger("reptok.app")
P = ParamSpec("P")
R = TypeVar("R")

MAX_PROMPT_CHARS = 1000  # the text encoder keeps ~32 tokens anyway; this only bounds the work
MAX_IMAGES = 16
Gallery = list[tuple[Image.Image, str]]


def friendly_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Every failure reaches the person as a gr.Error with a sentence, never a bare "Error"."""

    @functools.wraps(fn)  # keeps the signature, which Gradio reads for gr.Progress
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ImageLoadError as err:
            raise gr.Error(str(err)) from None
        except (ValueError, FileNotFoundError, ImportError) as err:
            text = str(err) or type(err).__name__
            raise gr.Error(text[:1].upper() + text[1:]) from None
        except Exception as err:  # a bug: log it for the operator, tell the person something useful
            log.exception("handler %s failed", fn.__name__)
            raise gr.Error(f"Something went wrong ({type(err).__name__}); please try again.") from None

    return wrapper


def _progress_fn(progress: gr.Progress | None, desc: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress((done, total), desc=desc)


def _open(path: str | None, what: str = "an image") -> Image.Image:
    if not path:
        raise gr.Error(f"Please upload {what}.")
    return load_image(path)  # the one place user files are opened


def _steps(value: object) -> int:
    return imaging.clamp_int(value, "steps", 1, 100)


class Explorer:
    """The app's state: the models, the precomputed manifold (loaded on first use)."""

    def __init__(self, models: ModelRegistry, manifold_path: Path) -> None:
        self.models = models
        self.manifold_path = manifold_path
        self._manifold: Manifold | None = None
        self._lock = threading.Lock()

    def model(self, label: str | None) -> RepTok:
        if not len(self.models):
            raise gr.Error(NO_MODEL_MESSAGE)
        return self.models.get(label)

    def manifold(self) -> Manifold | None:
        with self._lock:
            if self._manifold is None and self.manifold_path.is_file():
                self._manifold = load_manifold(self.manifold_path)
            return self._manifold

    # ----------------------------------------------------------------------------- reconstruct

    @friendly_errors
    def reconstruct(
        self,
        image: str | None,
        model_label: str | None,
        steps: float,
        seed: float,
        progress: gr.Progress = gr.Progress(track_tqdm=False),  # noqa: B008 (Gradio's idiom)
    ) -> tuple[Image.Image, Image.Image, Image.Image, str]:
        picture = _open(image)
        model = self.model(model_label)
        original = model.to_pil(model.preprocess(picture))[0]  # exactly what the encoder sees
        z, cos = model.encode_with_cosine(picture)  # (1, 1, D), (1,)
        recon = model.decode(
            z, steps=_steps(steps), seed=imaging.seed_value(seed), progress=_progress_fn(progress, "decoding")
        )[0]
        psnr, ssim = imaging.psnr_ssim(original, recon)
        cosine = float(cos[0])
        summary = (
            f"**PSNR** {psnr:.2f} dB · **SSIM** {ssim:.3f} · **cos(z, z_frozen)** {cosine:.3f}\n\n"
            f"{imaging.token_size_text(model.token_dim, model.image_size)}"
        )
        if held_out := imaging.held_out_text(self.models.entry(model_label).metrics):
            summary += f"\n\n{held_out}"  # the model itself, measured by train/evaluate.py
        return original, recon, imaging.error_heatmap(original, recon), summary

    @friendly_errors
    def variations(
        self,
        image: str | None,
        model_label: str | None,
        steps: float,
        seed: float,
        progress: gr.Progress = gr.Progress(track_tqdm=False),  # noqa: B008
    ) -> Gallery:
        picture = _open(image)
        model = self.model(model_label)
        seed_ = imaging.seed_value(seed)
        images = model.variations(
            model.encode(picture),
            4,
            seed=seed_,
            steps=_steps(steps),
            progress=_progress_fn(progress, "variations"),
        )
        return [(im, f"seed {seed_ + i}") for i, im in enumerate(images)]

    # -------------------------------------------------------------------------------- sampling

    def _sample(
        self,
        model_label: str | None,
        cfg: float,
        lo: float,
        hi: float,
        steps: float,
        seed: float,
        n: float,
        progress: gr.Progress | None,
        **condition: Any,
    ) -> list[Image.Image]:
        model = self.model(model_label)
        count = imaging.clamp_int(n, "number of images", 1, MAX_IMAGES)
        key, value = next(iter(condition.items()))
        return model.sample(
            **{key: [value] * count},
            cfg_scale=imaging.clamp_float(cfg, "CFG scale", 0.0, 10.0),
            cfg_interval=imaging.interval(lo, hi),
            # The slider sets the decoder's steps; the generator (one token: cheap) keeps the
            # model's own setting, the one its metrics.json was measured with.
            decode_steps=_steps(steps),
            seed=imaging.seed_value(seed),
            progress=_progress_fn(progress, "decoding"),
        )

    @friendly_errors
    def sample_class(
        self,
        class_name: str | None,
        model_label: str | None,
        cfg: float,
        lo: float,
        hi: float,
        steps: float,
        seed: float,
        n: float,
        progress: gr.Progress = gr.Progress(track_tqdm=False),  # noqa: B008
    ) -> Gallery:
        if not class_name:
            raise gr.Error("Please choose a class.")
        images = self._sample(model_label, cfg, lo, hi, steps, seed, n, progress, labels=str(class_name))
        return [(im, str(class_name)) for im in images]

    @friendly_errors
    def sample_text(
        self,
        prompt: str | None,
        model_label: str | None,
        cfg: float,
        lo: float,
        hi: float,
        steps: float,
        seed: float,
        n: float,
        progress: gr.Progress = gr.Progress(track_tqdm=False),  # noqa: B008
    ) -> Gallery:
        text = (prompt or "").strip()[:MAX_PROMPT_CHARS]
        if not text:
            raise gr.Error("Please enter a prompt.")
        images = self._sample(model_label, cfg, lo, hi, steps, seed, n, progress, prompts=text)
        caption = text if len(text) <= 60 else text[:57] + "..."
        return [(im, caption) for im in images]

    # --------------------------------------------------------------------------- interpolation

    @friendly_errors
    def interpolate(
        self,
        image_a: str | None,
        image_b: str | None,
        model_label: str | None,
        frames: float,
        mode: str,
        steps: float,
        seed: float,
        weight: float,
        progress: gr.Progress = gr.Progress(track_tqdm=False),  # noqa: B008
    ) -> tuple[Gallery, str, Image.Image, list[Image.Image]]:
        a, b = _open(image_a, "the first image"), _open(image_b, "the second image")
        if mode not in ("slerp", "lerp"):
            raise gr.Error(f"Mode must be 'slerp' or 'lerp', not {mode!r:.20}.")
        model = self.model(model_label)
        n = imaging.clamp_int(frames, "number of frames", 2, MAX_IMAGES)
        z = model.encode([a, b])  # (2, 1, D)
        weights = torch.linspace(0, 1, n)
        tokens = model.interpolate(z[0], z[1], weights, mode=mode)  # (N, 1, D)
        c, s = model.config.decoder.in_channels, model.config.decoder.input_size
        # One noise for every frame: only the token changes along the strip.
        noise = seeded_noise((1, c, s, s), imaging.seed_value(seed)).expand(n, -1, -1, -1)
        images = model.decode(
            tokens, noise=noise, steps=_steps(steps), progress=_progress_fn(progress, "decoding frames")
        )
        gif = imaging.write_gif(images, imaging.request_dir() / "interpolation.gif")
        strip = [(im, f"{w:.2f}") for im, w in zip(images, weights.tolist())]
        return strip, str(gif), self.frame_at(images, weight), images

    @staticmethod
    def frame_at(frames: list[Image.Image] | None, weight: float) -> Image.Image | None:
        if not frames:
            return None
        w = imaging.clamp_float(weight, "weight", 0.0, 1.0)
        return frames[round(w * (len(frames) - 1))]

    # -------------------------------------------------------------------------------- manifold

    def manifold_settings(self) -> list[str]:
        m = self.manifold()
        return list(m.settings) if m is not None else []

    @friendly_errors
    def manifold_plot(
        self,
        lam: str | None,
        image: str | None,
        progress: gr.Progress = gr.Progress(track_tqdm=False),  # noqa: B008
    ) -> tuple[Any, str]:
        m = self.manifold()
        if m is None:
            return None, (
                f"No precomputed manifold at `{self.manifold_path.name}` yet: it is written by "
                "`train/` (held-out tokens of each shipped tokenizer). The other tabs work without it."
            )
        if not m.settings:
            return None, "The manifold file holds no settings."
        lam = lam if lam in m.settings else next(iter(m.settings))
        xy, tokens = m.settings[lam]["xy"], m.settings[lam]["tokens"].astype(np.float32)
        note = f"{len(m.names)} held-out tokens, λ = {lam}."
        spot = None
        if image:
            picture = _open(image)
            label = self.models.by_lambda(lam)
            model = self.model(label)
            if label is None:
                note += (
                    f" No loaded model has λ = {lam}; your image was encoded with `{self.models.default}`."
                )
            z = model.encode(picture).reshape(-1).float().cpu().numpy()  # (D,)
            if z.shape[0] != tokens.shape[1]:
                note += f" Cannot place your image: its token has {z.shape[0]} numbers, the map's {tokens.shape[1]}."
            else:
                spot = place(z, tokens, xy)
                names = ", ".join(m.names[i] for i in nearest(z, tokens, 5))
                note += f" Your image's nearest neighbours: {names}."
        return _scatter(m, xy, spot), note

    # ------------------------------------------------------------------------------- backbones

    @friendly_errors
    def compare_backbones(
        self,
        image: str | None,
        steps: float,
        seed: float,
        progress: gr.Progress = gr.Progress(track_tqdm=False),  # noqa: B008
    ) -> tuple[Gallery, Gallery, str]:
        """The image through one tokenizer per backbone, and through the λ sweep of the default's
        backbone; each tokenizer's nearest held-out emoji in its own latent space."""
        picture = _open(image)
        if not len(self.models):
            raise gr.Error(NO_MODEL_MESSAGE)
        m = self.manifold()
        backbones, lambdas = self.models.backbone_row(), self.models.lambda_row()
        keys = list(dict.fromkeys(e.key for e in [*backbones, *lambdas]))  # the default is in both
        done: dict[str, tuple[Image.Image, str]] = {}
        lines: list[str] = []
        for i, key in enumerate(keys):
            progress((i, len(keys)), desc=key)
            entry, model = self.models.entry(key), self.models.get(key)
            original = model.to_pil(model.preprocess(picture))[0]
            z = model.encode(picture)
            recon = model.decode(z, steps=_steps(steps), seed=imaging.seed_value(seed))[0]
            psnr, ssim = imaging.psnr_ssim(original, recon)
            done[key] = (recon, f"{psnr:.1f} dB / {ssim:.3f}")
            tokens = m.model_tokens.get(key) if m is not None else None
            if tokens is None or tokens.shape[1] != model.token_dim:
                lines.append(f"- **{key}**: no precomputed tokens for this tokenizer, so no neighbours.")
            else:
                idx = nearest(z.reshape(-1).float().cpu().numpy(), tokens.astype(np.float32), 5)
                lines.append(
                    f"- **{key}** ({entry.backbone}, λ={entry.lam}): {', '.join(m.names[j] for j in idx)}"
                )
        by_backbone = [(done[e.key][0], f"{e.backbone} · {done[e.key][1]}") for e in backbones]
        by_lambda = [(done[e.key][0], f"λ={e.lam} · {done[e.key][1]}") for e in lambdas]
        return by_backbone, by_lambda, "**Nearest neighbours in each latent space**\n\n" + "\n".join(lines)


def _scatter(m: Manifold, xy: np.ndarray, spot: np.ndarray | None) -> Any:
    import plotly.graph_objects as go

    names, cats = np.array(m.names), np.array(m.categories)
    fig = go.Figure()
    for cat in sorted(set(m.categories)):
        idx = np.flatnonzero(cats == cat)
        fig.add_trace(
            go.Scatter(
                x=xy[idx, 0],
                y=xy[idx, 1],
                mode="markers",
                name=cat,
                text=names[idx],
                hovertemplate="%{text}<extra>" + cat + "</extra>",
                marker={"size": 6, "opacity": 0.75},
            )
        )
    if spot is not None:
        fig.add_trace(
            go.Scatter(
                x=[spot[0]],
                y=[spot[1]],
                mode="markers",
                name="your image",
                hovertemplate="your image<extra></extra>",
                marker={
                    "size": 18,
                    "symbol": "star",
                    "color": "black",
                    "line": {"width": 2, "color": "white"},
                },
            )
        )
    fig.update_layout(
        height=560,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"showticklabels": False, "title": ""},
        yaxis={"showticklabels": False, "title": ""},
        legend={"itemsizing": "constant"},
    )
    return fig
