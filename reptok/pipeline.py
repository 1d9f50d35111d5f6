"""`RepTok`: the whole stack behind one object, loaded from and saved to a folder.

    model = RepTok.from_pretrained("assets/models/reptok-emoji")
    z = model.encode(image)                       # (1, 1, D): the image as one token
    image = model.decode(z, seed=0)[0]            # and back
    samples = model.sample(labels=["Food & Drink"] * 4, cfg_scale=2.0)
    frames = model.decode(model.interpolate(z_a, z_b, torch.linspace(0, 1, 8)), seed=0)

The folder's format (config.json + fp16 safetensors, a shared backbone and VAE stored once) is
`reptok.storage`; the config, `reptok.model_config`; Hub repos (from_pretrained("user/name"),
push_to_hub), `reptok.hub`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor, nn

from reptok import hub, storage
from reptok.conditioning import class_velocities, text_velocities
from reptok.decoder import Decoder, ImageSpace
from reptok.encoder import Encoder
from reptok.generator import MixerGenerator, TextGenerator
from reptok.image_tensors import ImageInput, to_model_input, to_pil
from reptok.interpolation import interpolate_tokens
from reptok.labels import resolve_class
from reptok.model_config import FORMAT_VERSION, RepTokConfig, SamplingConfig
from reptok.sampling import ProgressFn, Sampler, guided, integrate, seeded_noise
from reptok.text import FrozenTextEncoder

# Models are built one at a time in a process. diffusers builds a model with torch.nn.init switched
# off and under accelerate's init_empty_weights, which patches nn.Module.register_parameter: for the
# whole process, not the thread. A module built in another thread meanwhile gets meta weights
# ("Cannot copy out of meta tensor"), and diffusers' lazy imports race too. Two app requests that
# each load a model hit both (tests/test_concurrent_loading.py).
_BUILD_LOCK = threading.RLock()

# RepTokConfig and SamplingConfig have always been imported from here; they stay importable.
__all__ = ["FORMAT_VERSION", "ImageInput", "OutputType", "RepTok", "RepTokConfig", "SamplingConfig"]

OutputType = Literal["pil", "pt"]


class RepTok:
    """The RepTok model stack: encode to one token, decode, sample by class or text, interpolate."""

    def __init__(
        self,
        config: RepTokConfig,
        encoder: Encoder,
        decoder: Decoder,
        image_space: ImageSpace,
        class_generator: MixerGenerator | None = None,
        text_generator: TextGenerator | None = None,
    ) -> None:
        self.config = config
        self.encoder = encoder
        self.decoder = decoder
        self.image_space = image_space
        self.class_generator = class_generator
        self.text_generator = text_generator
        self._text_encoder: FrozenTextEncoder | None = None
        self.device = torch.device("cpu")
        self.source: Path | None = None  # the folder it was loaded from, if any
        self.eval()

    # ------------------------------------------------------------------ construction and I/O

    @classmethod
    def from_config(cls, config: RepTokConfig, *, root: Path | None = None) -> RepTok:
        """Build every component from its config (random weights, or timm/hub weights where asked)."""
        with _BUILD_LOCK:
            return cls._build(config, root)

    @classmethod
    def _build(cls, config: RepTokConfig, root: Path | None) -> RepTok:
        encoder = Encoder(config.encoder)
        if config.decoder.token_dim != encoder.dim:
            raise ValueError(
                f"decoder.token_dim {config.decoder.token_dim} != encoder token size {encoder.dim}"
            )
        image_space = ImageSpace(config.image_space, storage.build_vae(config.image_space, root))
        class_gen = MixerGenerator(config.class_generator) if config.class_generator else None
        text_gen = TextGenerator(config.text_generator) if config.text_generator else None
        return cls(config, encoder, Decoder(config.decoder), image_space, class_gen, text_gen)

    def components(self) -> dict[str, nn.Module]:
        parts: dict[str, nn.Module] = {"encoder": self.encoder, "decoder": self.decoder}
        if self.image_space.vae is not None:
            parts["vae"] = self.image_space.vae
        if self.class_generator is not None:
            parts["class_generator"] = self.class_generator
        if self.text_generator is not None:
            parts["text_generator"] = self.text_generator
        if self._text_encoder is not None:
            parts["text_encoder"] = self._text_encoder
        return parts

    def backbone_sha256(self, dtype: torch.dtype = torch.float16) -> str:
        """The content hash of the backbone as `save_pretrained(dtype=...)` stores it (and checks it
        on load): equal hashes mean one stored file can serve both models."""
        return storage.state_sha256(storage.stored_state(storage.weight_files(self)["backbone"], dtype))

    def vae_sha256(self, dtype: torch.dtype = torch.float16) -> str | None:
        """The content hash of the VAE as `save_pretrained(dtype=...)` stores it in vae/ (None when
        no VAE is stored: pixel space, or a hub name): equal hashes mean one folder serves both."""
        vae = storage.stored_vae(self)
        return None if vae is None else storage.state_sha256(storage.stored_state(vae.state_dict(), dtype))

    def save_pretrained(
        self,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.float16,
        backbone_file: str | None = None,
        vae_folder: str | None = None,
    ) -> Path:
        """Write config.json + safetensors (+ vae/), floats in `dtype` ([cls] embeddings in fp32);
        the modules in memory keep their dtype.

        `backbone_file`: an already-saved backbone.safetensors (a path relative to `path`, e.g.
        "../dino/backbone.safetensors") to reference instead of copying. `vae_folder`: likewise an
        already-saved VAE folder (e.g. "../reptok-emoji/vae"). Each must hold this model's weights
        (compared in the dtype it was written in), or a ValueError says so."""
        return storage.save_model(
            self, Path(path), dtype=dtype, backbone_file=backbone_file, vae_folder=vae_folder
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        subfolder: str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> RepTok:
        """Load a saved folder, or a Hub repo id ("user/reptok-emoji"; a local folder wins when it
        exists); every component (the VAE too) computes in `dtype` on `device`. The Hub arguments
        are diffusers': `subfolder` (a model folder inside the repo; the siblings its config
        references come too), `revision`, `cache_dir`, `local_files_only` (or HF_HUB_OFFLINE=1),
        `token`. See `reptok.hub`."""
        root = hub.resolve(
            path, subfolder=subfolder, revision=revision, cache_dir=cache_dir,
            local_files_only=local_files_only, token=token,
        )  # fmt: skip
        config = storage.read_config(root)
        storage.check_vae_folder(root, config)  # before the VAE is built from it
        # The backbone's own weights come from our file, never from the hub.
        config.encoder = config.encoder.replace(pretrained=False)
        with _BUILD_LOCK:
            model = cls.from_config(config, root=root)
            storage.load_weights(model, root)
            model.source = root
            return model.to(device, dtype)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        commit_message: str = "Upload RepTok model",
        subfolder: str | None = None,
        dtype: torch.dtype = torch.float16,
    ) -> Any:
        """Upload a self-contained copy (own backbone and VAE, no "../" reference) to the Hub repo
        `repo_id`, created if missing; `from_pretrained(repo_id)` loads it. See `reptok.hub`."""
        return hub.push_to_hub(
            self, repo_id, private=private, token=token, revision=revision,
            commit_message=commit_message, subfolder=subfolder, dtype=dtype,
        )  # fmt: skip

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> RepTok:
        for module in self.components().values():
            module.to(device=device, dtype=dtype)
        if device is not None:
            self.device = torch.device(device)
        return self

    def eval(self) -> RepTok:
        for module in self.components().values():
            module.eval()
        return self

    @property
    def text_encoder(self) -> FrozenTextEncoder:
        """Loaded on first use: only text sampling needs it."""
        if self._text_encoder is None:
            if self.config.text_encoder is None:
                raise ValueError("this model has no text encoder configured")
            with _BUILD_LOCK:
                if self._text_encoder is None:  # another thread may have built it meanwhile
                    self._text_encoder = FrozenTextEncoder(self.config.text_encoder).to(self.device).eval()
        return self._text_encoder

    # ----------------------------------------------------------------------- image conversion

    @property
    def image_size(self) -> int:
        """Side of the images the decoder produces."""
        size = self.config.decoder.input_size
        vae = self.image_space.vae
        if vae is not None:
            size *= 2 ** (len(vae.config.block_out_channels) - 1)
        return size

    @property
    def token_dim(self) -> int:
        return self.encoder.dim

    def preprocess(self, images: ImageInput) -> Tensor:
        """PIL image(s) or a (B, 3, H, W) / (3, H, W) tensor in [-1, 1] -> (B, 3, S, S) at the
        decoder's resolution (center crop, antialiased resize)."""
        return to_model_input(images, self.image_size).to(self.device, torch.float32)

    to_pil = staticmethod(to_pil)  # (B, 3, H, W) in [-1, 1] -> list of RGB PIL images

    def _output(self, images: Tensor, output_type: OutputType) -> list[Image.Image] | Tensor:
        return self.to_pil(images) if output_type == "pil" else images

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the weights are held in (`from_pretrained(dtype=...)`)."""
        return next(self.decoder.parameters()).dtype

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Weights held in bf16 (or fp16) compute under autocast, so the fp32 inputs (images, noise,
        the sampler's state) need no casts and results come back fp32. On 2 CPU cores bf16 weights
        make the official XL decoder 2.6x faster per step (bench/RESULTS.md)."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    # ----------------------------------------------------------------------------- inference

    @torch.inference_mode()
    def encode(self, images: ImageInput) -> Tensor:
        """Images -> tokens z (B, 1, D)."""
        with self.autocast():
            return self.encoder(self.preprocess(images)).z.float()

    @torch.inference_mode()
    def cosine_to_frozen(self, images: ImageInput) -> Tensor:
        """cos(z, z_frozen) per image (B,): how far the adapted token moved from the SSL one."""
        return self.encode_with_cosine(images)[1]

    @torch.inference_mode()
    def encode_with_cosine(self, images: ImageInput) -> tuple[Tensor, Tensor]:
        """`encode` and `cosine_to_frozen` from one preprocessing and one batched ViT pass."""
        with self.autocast():
            out = self.encoder(self.preprocess(images), return_frozen=True)
        z, z_frozen = out.z.float(), out.z_frozen.float()  # (B, 1, D) each
        return z, torch.nn.functional.cosine_similarity(z, z_frozen, dim=-1)[:, 0]  # (B, 1, D), (B,)

    @torch.inference_mode()
    def decode(
        self,
        z: Tensor,
        *,
        steps: int | None = None,
        sampler: Sampler | None = None,
        seed: int | Sequence[int] = 0,
        noise: Tensor | None = None,
        shift: float | None = None,
        temperature: float | None = None,
        output_type: OutputType = "pil",
        progress: ProgressFn | None = None,
    ) -> list[Image.Image] | Tensor:
        """Tokens (B, 1, D) -> images. The decoder noise comes from `seed` (sample i: seed + i)
        unless `noise` is given (e.g. the same noise for every frame of an interpolation); either
        way it is scaled by `temperature` (default: the config's `decode_temperature`)."""
        s = self.config.sampling
        z = z.to(self.device, torch.float32)
        c, n = self.config.decoder.in_channels, self.config.decoder.input_size
        if noise is None:
            noise = seeded_noise((z.shape[0], c, n, n), seed, device=self.device)
        tau = s.decode_temperature if temperature is None else temperature
        with self.autocast():
            x = integrate(
                lambda x_t, t: self.decoder(x_t, t, z).float(),
                noise.to(self.device, torch.float32) * tau,
                steps=steps or s.decode_steps,
                sampler=sampler or s.decode_sampler,
                shift=shift or s.decode_shift,
                progress=progress,
            )
            images = self.image_space.decode(x)  # (B, 3, S, S), fp32
        return self._output(images, output_type)

    def reconstruct(self, images: ImageInput, **decode_kwargs: Any) -> list[Image.Image] | Tensor:
        """Encode to one token each and decode again."""
        return self.decode(self.encode(images), **decode_kwargs)

    def variations(
        self, z: Tensor, n: int, *, seed: int = 0, **decode_kwargs: Any
    ) -> list[Image.Image] | Tensor:
        """One token (1, 1, D) decoded with n different noises: what the token fixes, and what
        the decoder invents."""
        return self.decode(z[:1].expand(n, -1, -1), seed=seed, **decode_kwargs)

    interpolate = staticmethod(interpolate_tokens)  # (z_a, z_b, weights, mode="slerp") -> (N, 1, D)

    def class_id(self, label: int | str, *, generator: torch.Generator | None = None) -> int:
        """A class name, group name or id -> id, with a clear error for unknown ones. A group
        (config.class_groups) gives one of its member classes, drawn with `generator`."""
        if self.class_generator is None:
            raise ValueError("this model has no class generator")
        return resolve_class(
            label, class_names=self.config.class_names or [], class_groups=self.config.class_groups or {},
            num_classes=self.class_generator.config.num_classes, generator=generator,
        )  # fmt: skip

    @torch.inference_mode()
    def sample_tokens(
        self,
        *,
        labels: Sequence[int | str] | None = None,
        prompts: Sequence[str] | None = None,
        cfg_scale: float | None = None,
        cfg_interval: tuple[float, float] | None = None,
        steps: int | None = None,
        sampler: Sampler | None = None,
        temperature: float | None = None,
        seed: int = 0,
        progress: ProgressFn | None = None,
    ) -> Tensor:
        """Generate tokens (B, 1, D), one per label or prompt, from noise scaled by `temperature`
        (default: the config's `generate_temperature`), guided for t in `cfg_interval` (default:
        the config's interval for that generator, `SamplingConfig.guidance_interval`)."""
        if (labels is None) == (prompts is None):
            raise ValueError("pass exactly one of labels= or prompts=")
        s = self.config.sampling
        scale = s.cfg_scale if cfg_scale is None else float(cfg_scale)
        default = s.guidance_interval("class" if labels is not None else "text")
        interval = tuple(cfg_interval) if cfg_interval is not None else default
        if labels is not None:
            gen = self.class_generator
            if gen is None:
                raise ValueError("this model has no class generator")
            draw = torch.Generator().manual_seed(seed)  # which member class a group label becomes
            y = torch.tensor([self.class_id(label, generator=draw) for label in labels], device=self.device)
            fns = class_velocities(gen, y)
        else:
            gen = self.text_generator
            if gen is None:
                raise ValueError("this model has no text generator")
            fns = text_velocities(gen, self.text_encoder, prompts)
        b = len(labels if labels is not None else prompts)
        temp = s.generate_temperature if temperature is None else float(temperature)
        noise = seeded_noise((b, 1, self.token_dim), seed, device=self.device) * temp  # (B, 1, D)
        velocity = guided(fns.cond, fns.uncond, cfg_scale=scale, interval=interval, joint_fn=fns.joint)
        with self.autocast():
            z = integrate(
                lambda x, t: velocity(x, t).float(),
                noise,
                steps=steps or s.generate_steps,
                sampler=sampler or s.generate_sampler,
                progress=progress,
            )
            return gen.stats.denormalize(z).float()

    def sample(
        self,
        *,
        labels: Sequence[int | str] | None = None,
        prompts: Sequence[str] | None = None,
        cfg_scale: float | None = None,
        cfg_interval: tuple[float, float] | None = None,
        steps: int | None = None,
        sampler: Sampler | None = None,
        temperature: float | None = None,
        seed: int = 0,
        decode_steps: int | None = None,
        decode_sampler: Sampler | None = None,
        output_type: OutputType = "pil",
        progress: ProgressFn | None = None,
    ) -> list[Image.Image] | Tensor:
        """Sample images by class (`labels`, names or ids) or by text (`prompts`), one per entry;
        `temperature` scales the generator's noise (the decoder's is the config's)."""
        z = self.sample_tokens(
            labels=labels, prompts=prompts, cfg_scale=cfg_scale, cfg_interval=cfg_interval,
            steps=steps, sampler=sampler, temperature=temperature, seed=seed,
        )  # fmt: skip
        return self.decode(
            z,
            steps=decode_steps,
            sampler=decode_sampler,
            seed=seed,
            output_type=output_type,
            progress=progress,
        )

    def num_parameters(self) -> dict[str, int]:
        """Parameters per component (the backbone counted once, inside the encoder)."""
        return {name: sum(p.numel() for p in m.parameters()) for name, m in self.components().items()}
