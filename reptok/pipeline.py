"""`RepTok`: the whole stack behind one object, loaded from and saved to a folder.

    model = RepTok.from_pretrained("assets/models/reptok-emoji")
    z = model.encode(image)                       # (1, 1, D): the image as one token
    image = model.decode(z, seed=0)[0]            # and back
    samples = model.sample(labels=["Food & Drink"] * 4, cfg_scale=2.0)
    frames = model.decode(model.interpolate(z_a, z_b, torch.linspace(0, 1, 8)), seed=0)

On disk (config.json + fp16 safetensors, loaded with strict key checks):

    config.json                    every component's config, plain types
    backbone.safetensors           the frozen ViT weights; models that share a backbone
                                   reference one file (config "backbone_file") instead of copying it
    tokenizer.safetensors          the adapted [cls] embedding, its frozen original, the decoder
    class_generator.safetensors    optional
    text_generator.safetensors     optional
    vae/                           optional, a diffusers AutoencoderKL folder (unless a hub name)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from reptok.config import Config
from reptok.decoder import Decoder, DecoderConfig, ImageSpace, ImageSpaceConfig
from reptok.encoder import Encoder, EncoderConfig
from reptok.generator import MixerGenerator, MixerGeneratorConfig, TextGenerator, TextGeneratorConfig
from reptok.images import to_rgb
from reptok.sampling import ProgressFn, Sampler, guided, integrate, seeded_noise
from reptok.text import FrozenTextEncoder, TextEncoderConfig

FORMAT_VERSION = 1
ImageInput = Image.Image | Sequence[Image.Image] | Tensor
OutputType = Literal["pil", "pt"]


@dataclass
class SamplingConfig(Config):
    """Defaults for inference; every call can override them."""

    decode_steps: int = 25  # decoder flow steps
    decode_sampler: Sampler = "euler"
    decode_shift: float = 1.0  # time-grid shift (sampling.time_grid)
    generate_steps: int = 50  # generator flow steps (cheap: one token)
    generate_sampler: Sampler = "euler"
    cfg_scale: float = 1.5
    cfg_interval: tuple[float, float] = (0.3, 0.9)


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

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": "reptok", "format_version": FORMAT_VERSION}
        for name in self._PARTS:
            part = getattr(self, name)
            out[name] = None if part is None else part.to_dict()
        out |= {
            "class_names": self.class_names,
            "class_groups": self.class_groups,
            "backbone_file": self.backbone_file,
            "backbone_sha256": self.backbone_sha256,
            "info": self.info,
        }
        return out

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
        unknown = set(data) - {"class_names", "class_groups", "backbone_file", "backbone_sha256", "info"}
        if unknown:
            raise ValueError(f"unknown keys in config.json: {sorted(unknown)}")
        return cls(**kwargs, **data)


def _state_sha256(state: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _storage(key: str, value: Tensor, dtype: torch.dtype) -> Tensor:
    """A tensor as it is written: floats in `dtype`, except the [cls] embeddings, kept in fp32.

    A ViT's cls embedding can be ~1e-6 at initialisation: subnormal in fp16, where it would keep
    only a few bits, and it is the whole of what stage A learns (D numbers: fp32 costs nothing).
    """
    value = value.detach().cpu().contiguous()
    if not value.is_floating_point():
        return value
    return value.float() if key.endswith("cls_token") else value.to(dtype)


def _backbone_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A stored backbone without its cls embedding: the tokenizer file holds the adapted one."""
    return {k: v for k, v in state.items() if k != "cls_token"}


def _load_into(module: nn.Module, state: dict[str, Tensor], what: str) -> None:
    """Strict load with a message that names the first problem."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise ValueError(
            f"{what}: weights do not match the config ({len(missing)} missing, "
            f"{len(unexpected)} unexpected keys; first: {first})"
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ValueError(
                f"{what}: {key!r} has shape {tuple(value.shape)}, the config needs {tuple(own[key].shape)}"
            )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def _build_vae(config: ImageSpaceConfig, root: Path | None) -> nn.Module | None:
    if config.kind != "vae":
        return None
    from diffusers import AutoencoderKL

    if config.vae is not None:
        local = root / config.vae if root is not None else None
        source = str(local) if local is not None and local.is_dir() else config.vae
        return AutoencoderKL.from_pretrained(source)
    if config.vae_config is not None:
        return AutoencoderKL.from_config(config.vae_config)  # random weights: tests, or stage A from scratch
    raise ValueError(
        "image_space.kind='vae' needs image_space.vae (name or folder) or image_space.vae_config"
    )


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
        encoder = Encoder(config.encoder)
        if config.decoder.token_dim != encoder.dim:
            raise ValueError(
                f"decoder.token_dim {config.decoder.token_dim} != encoder token size {encoder.dim}"
            )
        image_space = ImageSpace(config.image_space, _build_vae(config.image_space, root))
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

    def _weight_files(self) -> dict[str, dict[str, Tensor]]:
        backbone = {k: v for k, v in self.encoder.backbone.state_dict().items() if k != "cls_token"}
        tokenizer = {
            "encoder.cls_token": self.encoder.backbone.cls_token.data,
            "encoder.frozen_cls_token": self.encoder.frozen_cls_token,
        } | {f"decoder.{k}": v for k, v in self.decoder.state_dict().items()}
        files = {"backbone": backbone, "tokenizer": tokenizer}
        if self.class_generator is not None:
            files["class_generator"] = self.class_generator.state_dict()
        if self.text_generator is not None:
            files["text_generator"] = self.text_generator.state_dict()
        return files

    def backbone_sha256(self, dtype: torch.dtype = torch.float16) -> str:
        """The content hash of the backbone as `save_pretrained(dtype=...)` stores it (and checks it
        on load): equal hashes mean one stored file can serve both models."""
        state = self._weight_files()["backbone"]
        return _state_sha256({k: _storage(k, v, dtype) for k, v in state.items()})

    def save_pretrained(
        self, path: str | os.PathLike, *, dtype: torch.dtype = torch.float16, backbone_file: str | None = None
    ) -> Path:
        """Write config.json + safetensors. `backbone_file`: an already-saved backbone.safetensors
        (a path relative to `path`, e.g. "../dino/backbone.safetensors") to reference instead of
        copying; its content must equal this model's backbone."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        files = self._weight_files()
        cast = {name: {k: _storage(k, v, dtype) for k, v in st.items()} for name, st in files.items()}
        if backbone_file is None:
            backbone_file = "backbone.safetensors"
            sha = _state_sha256(cast["backbone"])
            save_file(cast["backbone"], root / backbone_file, metadata={"format": "pt", "sha256": sha})
        else:
            # Reference a backbone stored elsewhere (another model's, or a pre-training run's
            # backbone.safetensors, in whatever dtype it was written): it must hold these weights.
            shared = _backbone_state(load_file(root / backbone_file))
            own = files["backbone"]
            if shared.keys() != own.keys() or not all(
                torch.equal(own[k].detach().cpu().to(shared[k].dtype), shared[k]) for k in own
            ):
                raise ValueError(
                    f"{backbone_file} holds a different backbone than this model's; refusing to reference it"
                )
            sha = _state_sha256(shared)
        for name, state in cast.items():
            if name != "backbone":
                save_file(state, root / f"{name}.safetensors", metadata={"format": "pt"})
        space = self.config.image_space
        if space.kind == "vae" and not _is_hub_name(space.vae, self.source):
            self.image_space.vae.save_pretrained(root / "vae")
            space = space.replace(vae="vae", vae_config=None)
        config = dataclasses.replace(
            self.config, image_space=space, backbone_file=backbone_file, backbone_sha256=sha
        )
        (root / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        return root

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> RepTok:
        root = Path(path)
        config_path = root / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"no RepTok model at {root}: {config_path} is missing")
        config = RepTokConfig.from_dict(json.loads(config_path.read_text()))
        # The backbone's own weights come from our file, never from the hub.
        config.encoder = config.encoder.replace(pretrained=False)
        model = cls.from_config(config, root=root)
        backbone_path = root / config.backbone_file
        backbone = _backbone_state(load_file(backbone_path))
        if config.backbone_sha256 and _state_sha256(backbone) != config.backbone_sha256:
            raise ValueError(
                f"{backbone_path} does not hold the backbone this model was trained on (sha256 differs)"
            )
        tokenizer = load_file(root / "tokenizer.safetensors")
        backbone["cls_token"] = tokenizer.pop("encoder.cls_token")
        _load_into(model.encoder.backbone, backbone, "backbone")
        model.encoder.frozen_cls_token.copy_(tokenizer.pop("encoder.frozen_cls_token"))
        _load_into(model.decoder, {k.removeprefix("decoder."): v for k, v in tokenizer.items()}, "decoder")
        for name in ("class_generator", "text_generator"):
            module = getattr(model, name)
            if module is not None:
                _load_into(module, load_file(root / f"{name}.safetensors"), name)
        model.source = root
        return model.to(device, dtype)

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
        if isinstance(images, Image.Image):
            images = [images]
        size = self.image_size
        if isinstance(images, Tensor):
            x = images[None] if images.dim() == 3 else images
            if x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"expected images of shape (B, 3, H, W) in [-1, 1], got {tuple(x.shape)}")
            x = torch.stack([_square(t, size) for t in x]) if x.shape[-2:] != (size, size) else x
        else:
            arrays = [np.asarray(_square_pil(to_rgb(im), size), dtype=np.float32) for im in images]
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0  # (B, 3, S, S)
        return x.to(self.device, torch.float32)

    @staticmethod
    def to_pil(images: Tensor) -> list[Image.Image]:
        """(B, 3, H, W) in [-1, 1] -> list of RGB PIL images."""
        arr = (
            ((images.detach().float().clamp(-1, 1) + 1) * 127.5)
            .round()
            .byte()
            .permute(0, 2, 3, 1)
            .cpu()
            .numpy()
        )
        return [Image.fromarray(a) for a in arr]

    def _output(self, images: Tensor, output_type: OutputType) -> list[Image.Image] | Tensor:
        return self.to_pil(images) if output_type == "pil" else images

    # ----------------------------------------------------------------------------- inference

    @torch.inference_mode()
    def encode(self, images: ImageInput) -> Tensor:
        """Images -> tokens z (B, 1, D)."""
        return self.encoder(self.preprocess(images)).z

    @torch.inference_mode()
    def cosine_to_frozen(self, images: ImageInput) -> Tensor:
        """cos(z, z_frozen) per image (B,): how far the adapted token moved from the SSL one."""
        return self.encode_with_cosine(images)[1]

    @torch.inference_mode()
    def encode_with_cosine(self, images: ImageInput) -> tuple[Tensor, Tensor]:
        """`encode` and `cosine_to_frozen` from one preprocessing and one batched ViT pass."""
        out = self.encoder(self.preprocess(images), return_frozen=True)
        return out.z, torch.nn.functional.cosine_similarity(out.z, out.z_frozen, dim=-1)[
            :, 0
        ]  # (B,1,D), (B,)

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
        output_type: OutputType = "pil",
        progress: ProgressFn | None = None,
    ) -> list[Image.Image] | Tensor:
        """Tokens (B, 1, D) -> images. The decoder noise comes from `seed` (sample i: seed + i)
        unless `noise` is given (e.g. the same noise for every frame of an interpolation)."""
        s = self.config.sampling
        z = z.to(self.device, torch.float32)
        c, n = self.config.decoder.in_channels, self.config.decoder.input_size
        if noise is None:
            noise = seeded_noise((z.shape[0], c, n, n), seed, device=self.device)
        x = integrate(
            lambda x_t, t: self.decoder(x_t, t, z),
            noise.to(self.device, torch.float32),
            steps=steps or s.decode_steps,
            sampler=sampler or s.decode_sampler,
            shift=shift or s.decode_shift,
            progress=progress,
        )
        return self._output(self.image_space.decode(x), output_type)

    def reconstruct(self, images: ImageInput, **decode_kwargs: Any) -> list[Image.Image] | Tensor:
        """Encode to one token each and decode again."""
        return self.decode(self.encode(images), **decode_kwargs)

    def variations(
        self, z: Tensor, n: int, *, seed: int = 0, **decode_kwargs: Any
    ) -> list[Image.Image] | Tensor:
        """One token (1, 1, D) decoded with n different noises: what the token fixes, and what
        the decoder invents."""
        return self.decode(z[:1].expand(n, -1, -1), seed=seed, **decode_kwargs)

    @staticmethod
    def interpolate(
        z_a: Tensor, z_b: Tensor, weights: Sequence[float] | Tensor, mode: Literal["slerp", "lerp"] = "slerp"
    ) -> Tensor:
        """Tokens between z_a and z_b ((1, 1, D) or (D,)) at `weights` -> (N, 1, D).
        Weight 0 gives z_a, weight 1 gives z_b, exactly."""
        a, b = z_a.reshape(1, -1).float(), z_b.reshape(1, -1).float()  # (1, D)
        w = torch.as_tensor(weights, dtype=torch.float32, device=a.device).reshape(-1, 1)  # (N, 1)
        if mode == "lerp":
            out = (1 - w) * a + w * b
        elif mode == "slerp":
            cos = torch.nn.functional.cosine_similarity(a, b).clamp(-1.0, 1.0)
            omega = torch.arccos(cos)  # (1,)
            if float(omega) < 1e-4:  # nearly parallel: slerp degenerates to lerp
                out = (1 - w) * a + w * b
            else:
                out = (torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / torch.sin(omega)
        else:
            raise ValueError(f"mode must be 'slerp' or 'lerp', got {mode!r}")
        return out[:, None, :]  # (N, 1, D)

    def class_id(self, label: int | str, *, generator: torch.Generator | None = None) -> int:
        """A class name, group name or id -> id, with a clear error for unknown ones. A group
        (config.class_groups) gives one of its member classes, drawn with `generator`."""
        gen = self.class_generator
        if gen is None:
            raise ValueError("this model has no class generator")
        names = self.config.class_names or []
        if isinstance(label, str) and not label.strip().lstrip("-").isdigit():
            lowered = {n.lower(): i for i, n in enumerate(names)}
            groups = {g.lower(): members for g, members in (self.config.class_groups or {}).items()}
            key = label.strip().lower()
            if key in lowered:
                return lowered[key]
            if key in groups:
                pick = int(torch.randint(len(groups[key]), (1,), generator=generator))
                return self.class_id(groups[key][pick])
            known = [*(self.config.class_groups or {}), *names]
            raise ValueError(f"unknown class {label!r}; known: {', '.join(known) or '(none named)'}")
        idx = int(label)
        if not 0 <= idx < gen.config.num_classes:
            raise ValueError(f"class id {idx} out of range 0..{gen.config.num_classes - 1}")
        return idx

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
        seed: int = 0,
        progress: ProgressFn | None = None,
    ) -> Tensor:
        """Generate tokens (B, 1, D), one per label or prompt."""
        if (labels is None) == (prompts is None):
            raise ValueError("pass exactly one of labels= or prompts=")
        s = self.config.sampling
        scale = s.cfg_scale if cfg_scale is None else float(cfg_scale)
        interval = tuple(cfg_interval) if cfg_interval is not None else s.cfg_interval
        if labels is not None:
            gen = self.class_generator
            if gen is None:
                raise ValueError("this model has no class generator")
            draw = torch.Generator().manual_seed(seed)  # which member class a group label becomes
            y = torch.tensor([self.class_id(label, generator=draw) for label in labels], device=self.device)
            null = torch.full_like(y, gen.null_class)
            cond_fn, uncond_fn = (lambda x, t: gen(x, t, y)), (lambda x, t: gen(x, t, null))
            both = torch.cat([y, null])  # (2B,)
            joint_fn = lambda x, t: gen(x.repeat(2, 1, 1), t.repeat(2), both).chunk(2)  # noqa: E731
        else:
            gen = self.text_generator
            if gen is None:
                raise ValueError("this model has no text generator")
            # Each distinct prompt is encoded once (the app asks for 16 samples of one prompt).
            unique = list(dict.fromkeys(str(p) for p in prompts))
            text, mask = self.text_encoder(unique)  # (U, L, Dt), (U, L)
            where = torch.tensor([unique.index(str(p)) for p in prompts], device=text.device)
            text, mask = text[where], mask[where]  # (B, L, Dt), (B, L)
            drop = torch.ones(len(prompts), dtype=torch.bool, device=self.device)
            cond_fn = lambda x, t: gen(x, t, text, mask)  # noqa: E731
            uncond_fn = lambda x, t: gen(x, t, text, mask, uncond=drop)  # noqa: E731
            text2, mask2 = text.repeat(2, 1, 1), mask.repeat(2, 1)  # (2B, L, Dt), (2B, L)
            drop2 = torch.cat([~drop, drop])  # first half conditional, second half null text

            def joint_fn(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
                return gen(x.repeat(2, 1, 1), t.repeat(2), text2, mask2, uncond=drop2).chunk(2)

        b = len(labels if labels is not None else prompts)
        noise = seeded_noise((b, 1, self.token_dim), seed, device=self.device)
        velocity = guided(cond_fn, uncond_fn, cfg_scale=scale, interval=interval, joint_fn=joint_fn)
        z = integrate(
            velocity,
            noise,
            steps=steps or s.generate_steps,
            sampler=sampler or s.generate_sampler,
            progress=progress,
        )
        return gen.stats.denormalize(z)

    def sample(
        self,
        *,
        labels: Sequence[int | str] | None = None,
        prompts: Sequence[str] | None = None,
        cfg_scale: float | None = None,
        cfg_interval: tuple[float, float] | None = None,
        steps: int | None = None,
        sampler: Sampler | None = None,
        seed: int = 0,
        decode_steps: int | None = None,
        decode_sampler: Sampler | None = None,
        output_type: OutputType = "pil",
        progress: ProgressFn | None = None,
    ) -> list[Image.Image] | Tensor:
        """Sample images by class (`labels`, names or ids) or by text (`prompts`), one per entry."""
        z = self.sample_tokens(
            labels=labels, prompts=prompts, cfg_scale=cfg_scale, cfg_interval=cfg_interval,
            steps=steps, sampler=sampler, seed=seed,
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


def _is_hub_name(vae: str | None, source: Path | None) -> bool:
    """True for a VAE named on the hub (kept as a name); False for random or local ones (copied)."""
    if vae is None or Path(vae).is_dir():
        return False
    return not (source is not None and (source / vae).is_dir())


def _square_pil(image: Image.Image, size: int) -> Image.Image:
    """Central square, resized with Lanczos (in PIL: cheap even for a large photo)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return image if side == size else image.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)


def _square(image: Tensor, size: int) -> Tensor:
    """(3, H, W) -> (3, size, size): central square, antialiased resize."""
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[:, top : top + side, left : left + side]
    if side != size:
        image = torch.nn.functional.interpolate(
            image[None].float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False
        )[0].clamp(-1, 1)
    return image
