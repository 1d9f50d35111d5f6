"""What each tab does when asked: plain functions over a ModelRegistry, with errors a person can read."""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import gradio as gr
import numpy as np
import torch
from PIL import Image

from app_parts import imaging, outputs
from app_parts.estimates import MAX_IMAGES, Estimates, refine_value, steps_value
from app_parts.registry import NO_MODEL_MESSAGE, ModelRegistry
from reptok.images import ImageLoadError, load_image
from reptok.inversion import RefineConfig, refine
from reptok.manifold import Manifold, load_manifold, nearest
from reptok.pipeline import RepTok
from reptok.sampling import seeded_noise

log = logging.getLogger("reptok.app")
P = ParamSpec("P")
R = TypeVar("R")

MAX_PROMPT_CHARS = 1000  # the text encoder keeps ~32 tokens anyway; this only bounds the work
REFINED_TOKENS_KEPT = 16  # refined tokens kept for the next event on the same image (the variations)
MAX_TEMPERATURE = 1.5  # decoder τ and generator T: past 1 the noise is wider than the flows were trained on
Gallery = outputs.Gallery  # (path of a PNG, caption): handlers return files they wrote (see outputs.py)


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


def open_upload(path: str | None, min_size: Callable[[], int | None], what: str = "an image") -> Image.Image:
    """The upload at `path`, decoded at least `min_size()` pixels on its shorter side (large JPEGs are
    decoded at a reduced scale). `min_size` is called only once there is a path, so a missing upload
    is reported before any model is loaded."""
    if not path:
        raise gr.Error(f"Please upload {what}.")
    return load_image(path, min_size=min_size())  # the one place user files are opened


def _temperature(value: object, name: str = "τ") -> float | None:
    """τ or T from a slider; None (an API call without it) keeps the model's own default."""
    return None if value is None else imaging.clamp_float(value, name, 0.0, MAX_TEMPERATURE)


class Explorer:
    """The app's state: the models, the precomputed manifold (loaded on first use)."""

    def __init__(self, models: ModelRegistry, manifold_path: Path) -> None:
        self.models = models
        self.estimates = Estimates(models)  # the seconds under each button
        self.manifold_path = manifold_path
        self._manifold: Manifold | None = None
        self._lock = threading.Lock()
        self._refined: OrderedDict[tuple[int, str, int, int], torch.Tensor] = OrderedDict()  # (1, 1, D) each
        self._refined_lock = threading.Lock()

    def model(self, label: str | None) -> RepTok:
        if not len(self.models):
            raise gr.Error(NO_MODEL_MESSAGE)
        return self.models.get(label)

    def input_size(self, *labels: str | None) -> Callable[[], int | None]:
        """For _open: the largest image size of these models (loading them), None when there are none."""
        return lambda: max((self.model(label).image_size for label in labels), default=None)

    def manifold(self) -> Manifold | None:
        with self._lock:
            if self._manifold is None and self.manifold_path.is_file():
                self._manifold = load_manifold(self.manifold_path)
            return self._manifold

    def _timed(
        self, model_label: str | None, steps: int, images: int, decode: Callable[[], list[Image.Image]]
    ) -> list[Image.Image]:
        """`decode()`, a decode of `images` tokens at `steps` steps, its seconds given to the model's
        speed estimate (ModelRegistry.observed_decode)."""
        start = time.perf_counter()
        out = decode()
        self.models.observed_decode(model_label, time.perf_counter() - start, steps, images)
        return out

    # ----------------------------------------------------------------------------- reconstruct

    def _token(
        self,
        model_label: str | None,
        picture: Image.Image,
        refine_steps: float | None,
        seed: int,
        progress: gr.Progress | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The image's token (1, 1, D): the encoder's, or refined on the image for `refine_steps`
        (reptok.inversion); with the encoder's token and its cos(z, z_frozen) (1,)."""
        model = self.model(model_label)
        z, cos = model.encode_with_cosine(picture)  # (1, 1, D), (1,)
        steps = refine_value(refine_steps)
        if not steps:
            return z, z, cos
        # The variations chained after a reconstruction ask for the same token: refine once (~1 s).
        pixels = model.preprocess(picture).cpu().numpy().tobytes()  # what the model sees: 64×64×3 floats
        key = (id(model), hashlib.sha256(pixels).hexdigest(), steps, seed)
        with self._refined_lock:
            token = self._refined.get(key)
        if token is None:
            config, start = RefineConfig(steps=steps, seed=seed), time.perf_counter()
            token = refine(model, picture, z, config, _progress_fn(progress, "refining the token"))
            self.models.observed_refine_step(model_label, (time.perf_counter() - start) / steps)
            with self._refined_lock:
                self._refined[key] = token
                while len(self._refined) > REFINED_TOKENS_KEPT:
                    self._refined.popitem(last=False)  # the oldest
        return token, z, cos

    @friendly_errors
    def reconstruct(
        self,
        image: str | None,
        model_label: str | None,
        steps: float,
        seed: float,
        temperature: float | None = None,
        refine_steps: float | None = 0,
        progress: gr.Progress = gr.Progress(track_tqdm=False),  # noqa: B008 (Gradio's idiom)
    ) -> tuple[str, str, str, str]:
        picture = open_upload(image, self.input_size(model_label))
        model = self.model(model_label)
        original = model.to_pil(model.preprocess(picture))[0]  # exactly what the encoder sees
        seed_ = imaging.seed_value(seed)
        z, z_encoder, cos = self._token(model_label, picture, refine_steps, seed_, progress)
        n_steps, tau = steps_value(steps), _temperature(temperature)

        def render(token: torch.Tensor) -> Image.Image:
            decoded = self._timed(model_label, n_steps, 1, lambda: model.decode(
                token, steps=n_steps, seed=seed_, temperature=tau, progress=_progress_fn(progress, "decoding")
            ))  # fmt: skip
            return decoded[0]

        recon = render(z)
        psnr, ssim = imaging.psnr_ssim(original, recon)
        used = model.config.sampling.decode_temperature if tau is None else tau
        summary = f"**PSNR** {psnr:.2f} dB · **SSIM** {ssim:.3f} · "
        if z is not z_encoder:  # refined: say so, and what the encoder's own token gave
            base_psnr, base_ssim = imaging.psnr_ssim(original, render(z_encoder))
            moved = float(torch.nn.functional.cosine_similarity(z, z_encoder, dim=-1))
            summary += (
                f"token refined on this image by {refine_value(refine_steps)} gradient steps (cos to the "
                f"encoder's token {moved:.3f}); the encoder's token gives {base_psnr:.2f} dB · {base_ssim:.3f} · "
            )
        summary += (
            f"**cos(z, z_frozen)** {float(cos[0]):.3f} · decoded in {n_steps} steps from noise scaled by τ = {used:g}\n\n"
            f"{imaging.token_size_text(model.token_dim, model.image_size)}"
        )
        if held_out := imaging.held_out_text(self.models.entry(model_label).metrics):
            summary += f"\n\n{held_out}"  # the model itself, measured by train/evaluate.py
        heat = imaging.error_heatmap(original, recon)
        paths = outputs.write_pngs([original, recon, heat], ["original", "reconstruction", "error"])
        return paths[0], paths[1], paths[2], summary

    @friendly_errors
    def variations(
        self,
        image: str | None,
        model_label: str | None,
        steps: float,
        seed: float,
        temperature: float | None = None,
        refine_steps: float | None = 0,
        progress: gr.Progress = gr.Progress(track_tqdm=False),  # noqa: B008
    ) -> Gallery:
        picture = open_upload(image, self.input_size(model_label))
        model = self.model(model_label)
        seed_ = imaging.seed_value(seed)
        # The reconstruction's token: refined tokens are kept, so this one is not refined again.
        z, _, _ = self._token(model_label, picture, refine_steps, seed_, progress)
        n_steps = steps_value(steps)
        images = self._timed(model_label, n_steps, 4, lambda: model.variations(
            z, 4, seed=seed_, steps=n_steps, temperature=_temperature(temperature),
            progress=_progress_fn(progress, "variations"),
        ))  # fmt: skip
        return outputs.gallery(images, [f"seed {seed_ + i}" for i in range(len(images))])

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
        temperature: float | None,
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
            # The steps slider sets the decoder's; the generator's steps (one token: cheap) stay
            # the model's own setting, the one its metrics.json was measured with.
            decode_steps=steps_value(steps),
            temperature=_temperature(temperature, "T"),
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
        temperature: float | None = None,
        progress: gr.Progress = gr.Progress(track_tqdm=False),  # noqa: B008
    ) -> Gallery:
        if not class_name:
            raise gr.Error("Please choose a class.")
        images = self._sample(
            model_label, cfg, lo, hi, steps, seed, n, temperature, progress, labels=str(class_name)
        )
        return outputs.gallery(images, [str(class_name)] * len(images))

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
        temperature: float | None = None,
        progress: gr.Progress = gr.Progress(track_tqdm=False),  # noqa: B008
    ) -> Gallery:
        text = (prompt or "").strip()[:MAX_PROMPT_CHARS]
        if not text:
            raise gr.Error("Please enter a prompt.")
        images = self._sample(model_label, cfg, lo, hi, steps, seed, n, temperature, progress, prompts=text)
        caption = text if len(text) <= 60 else text[:57] + "..."
        return outputs.gallery(images, [caption] * len(images))

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
        refine_steps: float | None = 0,
        progress: gr.Progress = gr.Progress(track_tqdm=False),  # noqa: B008
    ) -> tuple[Gallery, str, str | None, list[Image.Image]]:
        size = self.input_size(model_label)
        a, b = open_upload(image_a, size, "the first image"), open_upload(image_b, size, "the second image")
        if mode not in ("slerp", "lerp"):
            raise gr.Error(f"Mode must be 'slerp' or 'lerp', not {mode!r:.20}.")
        model = self.model(model_label)
        n = imaging.clamp_int(frames, "number of frames", 2, MAX_IMAGES)
        seed_ = imaging.seed_value(seed)
        # The end tokens (1, 1, D) each: the encoder's, or each refined on its own image (and kept, as
        # the Reconstruct tab's are).
        z_a, z_b = (self._token(model_label, p, refine_steps, seed_, progress)[0] for p in (a, b))
        weights = torch.linspace(0, 1, n)
        tokens = model.interpolate(z_a, z_b, weights, mode=mode)  # (N, 1, D)
        c, s = model.config.decoder.in_channels, model.config.decoder.input_size
        # One noise for every frame: only the token changes along the strip.
        noise = seeded_noise((1, c, s, s), seed_).expand(n, -1, -1, -1)
        n_steps = steps_value(steps)
        images = self._timed(model_label, n_steps, n, lambda: model.decode(
            tokens, noise=noise, steps=n_steps, progress=_progress_fn(progress, "decoding frames")
        ))  # fmt: skip
        strip = outputs.gallery(images, [f"{w:.2f}" for w in weights.tolist()])
        gif = outputs.write_gif(images, Path(strip[0][0]).parent / "interpolation.gif")
        frame = strip[_frame_index(len(images), weight)][0]  # the strip's own file: nothing rewritten
        return strip, str(gif), frame, images

    @staticmethod
    def frame_at(frames: list[Image.Image] | None, weight: float) -> str | None:
        """The frame at the slider's weight, as a new file (the strip's may be an hour old and gone)."""
        if not frames:
            return None
        return outputs.write_pngs([frames[_frame_index(len(frames), weight)]], ["frame"])[0]

    def manifold_settings(self) -> list[str]:
        """The manifold file's λ labels, in its order ([] without a file); the tab: tab_manifold.py."""
        m = self.manifold()
        return list(m.settings) if m is not None else []

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
        backbones, lambdas = self.models.backbone_row(), self.models.lambda_row()
        keys = list(dict.fromkeys(e.key for e in [*backbones, *lambdas]))  # the default is in both
        picture = open_upload(image, self.input_size(*keys))
        if not len(self.models):
            raise gr.Error(NO_MODEL_MESSAGE)
        m = self.manifold()
        done: dict[str, tuple[Image.Image, str]] = {}
        lines: list[str] = []
        for i, key in enumerate(keys):
            progress((i, len(keys)), desc=key)
            entry, model = self.models.entry(key), self.models.get(key)
            original = model.to_pil(model.preprocess(picture))[0]
            z = model.encode(picture)
            recon = model.decode(z, steps=steps_value(steps), seed=imaging.seed_value(seed))[0]
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
        # Five tiles to a row: the backbone's name without its details ("CLIP-style ViT, 192-d token"
        # -> "CLIP-style ViT"; the neighbours below give them), so the PSNR / SSIM stay readable.
        by_backbone = outputs.gallery(
            [done[e.key][0] for e in backbones],
            [f"{e.backbone.split(',')[0]} · {done[e.key][1]}" for e in backbones],
        )
        by_lambda = outputs.gallery(
            [done[e.key][0] for e in lambdas], [f"λ={e.lam} · {done[e.key][1]}" for e in lambdas]
        )
        return by_backbone, by_lambda, "**Nearest neighbours in each latent space**\n\n" + "\n".join(lines)


def _frame_index(count: int, weight: float) -> int:
    return round(imaging.clamp_float(weight, "weight", 0.0, 1.0) * (count - 1))
