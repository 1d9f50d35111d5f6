"""`RepTokConfig`: every component's config in one object, what a model folder's config.json holds.

Plain types only (no pickles), so a model folder reloads anywhere; unknown keys are refused,
a newer format is refused with a message that says to upgrade.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from reptok.config import Config
from reptok.decoder import DecoderConfig, ImageSpaceConfig
from reptok.encoder import EncoderConfig
from reptok.generator import MixerGeneratorConfig, TextGeneratorConfig
from reptok.sampling import Sampler
from reptok.text import TextEncoderConfig

FORMAT_VERSION = 1
Condition = Literal["class", "text"]  # what a generator follows: a class label or a text prompt


@dataclass
class SamplingConfig(Config):
    """Defaults for inference; every call can override them."""

    decode_steps: int = 25  # decoder flow steps
    decode_sampler: Sampler = "euler"
    decode_shift: float = 1.0  # time-grid shift (sampling.time_grid)
    # τ, the scale of the decoder's starting noise. τ < 1 starts nearer the mean latent given the
    # token: sharper, surer reconstructions from a small, short-trained decoder, with less sampled
    # detail (train/decode_sweep.py measures it; the shipped model's choice is in its model card).
    decode_temperature: float = 1.0
    generate_steps: int = 50  # generator flow steps (cheap: one token)
    # T, the scale of the generator's starting noise (Glow's sampling temperature; BigGAN's truncation
    # trick does the same for a GAN). T < 1 draws tokens nearer the modes of their class or prompt:
    # more typical samples, less spread (train/guidance_sweep.py measures both; the shipped model's
    # choice is in its model card).
    generate_temperature: float = 1.0
    generate_sampler: Sampler = "euler"
    cfg_scale: float = 1.5
    # Guidance only for t in [lo, hi] (sampling.guided; the paper: [0.3, 0.9]). `cfg_interval` is the
    # class generator's, and the text generator's unless `text_cfg_interval` is set: they are two
    # different models, and each is best guided over its own range (the shipped default's choice and
    # its measurements are in its model card).
    cfg_interval: tuple[float, float] = (0.3, 0.9)
    text_cfg_interval: tuple[float, float] | None = None  # None: cfg_interval

    def guidance_interval(self, cond: Condition) -> tuple[float, float]:
        """The default guidance interval of the class or the text generator."""
        if cond == "text" and self.text_cfg_interval is not None:
            return self.text_cfg_interval
        return self.cfg_interval


@dataclass
class RepTokConfig:
    encoder: EncoderConfig
    decoder: DecoderConfig
    image_space: ImageSpaceConfig = field(default_factory=ImageSpaceConfig)
    class_generator: MixerGeneratorConfig | None = None
    text_generator: TextGeneratorConfig | None = None
    text_encoder: TextEncoderConfig | None = None
    class_names: list[str] | None = None  # names of the class generator's labels, in id order
    # Coarser labels as unions of classes, e.g. emoji category -> its subcategories: sampling a
    # group draws one member class per sample, so one generator serves both levels.
    class_groups: dict[str, list[str]] | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    backbone_file: str = "backbone.safetensors"  # relative to the model folder
    backbone_sha256: str | None = None  # of the stored backbone; checked on load
    # Of the stored VAE folder (image_space.vae, possibly another model's "../<name>/vae"); checked
    # on load. None: no VAE stored (pixel space, a hub name), or a model saved before it existed.
    vae_sha256: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # free-form: name, data, training notes

    _PARTS: ClassVar[dict[str, type[Config]]] = {
        "encoder": EncoderConfig,
        "decoder": DecoderConfig,
        "image_space": ImageSpaceConfig,
        "class_generator": MixerGeneratorConfig,
        "text_generator": TextGeneratorConfig,
        "text_encoder": TextEncoderConfig,
        "sampling": SamplingConfig,
    }
    # Fields stored as they are (plain types already).
    _PLAIN: ClassVar[tuple[str, ...]] = (
        "class_names",
        "class_groups",
        "backbone_file",
        "backbone_sha256",
        "vae_sha256",
        "info",
    )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": "reptok", "format_version": FORMAT_VERSION}
        for name in self._PARTS:
            part = getattr(self, name)
            out[name] = None if part is None else part.to_dict()
        return out | {name: getattr(self, name) for name in self._PLAIN}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RepTokConfig:
        data = dict(data)
        if data.pop("format", "reptok") != "reptok":
            raise ValueError("config.json is not a RepTok model config")
        version = data.pop("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(
                f"model format {version} is newer than this library ({FORMAT_VERSION}); upgrade reptok"
            )
        kwargs: dict[str, Any] = {}
        for name, part_cls in cls._PARTS.items():
            if data.get(name) is not None:
                kwargs[name] = part_cls.from_dict(data.pop(name))
            else:
                data.pop(name, None)
        unknown = set(data) - set(cls._PLAIN)
        if unknown:
            raise ValueError(f"unknown keys in config.json: {sorted(unknown)}")
        return cls(**kwargs, **data)
