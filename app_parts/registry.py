"""Which RepTok models the app can use: found on disk at start, each loaded once on first use."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from reptok.encoder import BACKBONE_METHODS
from reptok.inversion import RefineConfig, refine
from reptok.manifold import lambda_label
from reptok.pipeline import RepTok, RepTokConfig

log = logging.getLogger("reptok.app")
ROOT = Path(__file__).resolve().parents[1]
ASSET_MODELS = ROOT / "assets" / "models"
MODELS_ENV = "REPTOK_MODELS_DIR"
DTYPE_ENV = "REPTOK_DTYPE"  # auto (default), float32 or bfloat16: the weights' dtype in the app
# auto: bf16 weights for a model this large on a CPU. The official RepTok-XL (1.19 B parameters) on 2
# cores: a decoder step 2.08 -> 0.81 s, the 50-step class token 16.5 -> 3.6 s (bench/RESULTS.md). The
# emoji models (29 M) stay fp32: their matmuls are too small to gain, and their metrics are fp32's.
BF16_MIN_PARAMETERS = 100_000_000
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
Ability = Literal["reconstruct", "class", "text"]  # what a tab asks of its models (ModelEntry.can)
METHOD_ORDER = {method: i for i, method in enumerate(BACKBONE_METHODS)}  # the paper's table order


@dataclass(frozen=True)
class DecodeSpeed:
    """One model's measured speed on this machine (batch of one), for the "≈ 0.1 s" next to a button."""

    encode_s: float  # one image through the encoder
    step_s: float  # one decoder step (a Heun step counts its two evaluations)
    fixed_s: float  # per decode, whatever the steps: noise, the VAE decoder, the PIL conversion

    def decode_s(self, steps: int, images: int = 1) -> float:
        """A decode of `images` tokens at `steps` steps; a batch is counted as that many single
        decodes (CPU: roughly right for the small models, pessimistic for the tiniest)."""
        return images * (steps * self.step_s + self.fixed_s)


def inference_dtype(model: RepTok) -> torch.dtype:
    """The dtype the app holds `model`'s weights in: $REPTOK_DTYPE, or by size (BF16_MIN_PARAMETERS)."""
    setting = os.environ.get(DTYPE_ENV, "auto").strip().lower()
    if setting == "auto":
        big = sum(model.num_parameters().values()) >= BF16_MIN_PARAMETERS
        return torch.bfloat16 if big and model.device.type == "cpu" else torch.float32
    if setting not in DTYPES:
        raise ValueError(f"{DTYPE_ENV}={setting!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[setting]


def measure_speed(model: RepTok) -> DecodeSpeed:
    """Time one encode and decodes of 1 and 3 steps (after one untimed warm-up decode): the step
    time is the difference, so the fixed cost is not counted per step. About five decoder steps."""
    from PIL import Image

    image = Image.new("RGB", (model.image_size, model.image_size), "white")
    z = model.encode(image)  # (1, 1, D); also warms the encoder

    def timed(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    encode_s = timed(lambda: model.encode(image))
    model.decode(z, steps=1)  # warm-up: lazy initialisation, allocator
    one, three = timed(lambda: model.decode(z, steps=1)), timed(lambda: model.decode(z, steps=3))
    step_s = max((three - one) / 2, 1e-4)  # timer noise can make the difference ~0 for tiny models
    return DecodeSpeed(encode_s=encode_s, step_s=step_s, fixed_s=max(one - step_s, 0.0))


@dataclass
class ModelEntry:
    """A model folder and its config (read at discovery: cheap); the weights load on demand."""

    key: str  # unique label shown in dropdowns
    path: Path
    config: RepTokConfig
    model: RepTok | None = None
    metrics: dict[str, object] = field(default_factory=dict)  # its metrics.json, read with the model
    speed: DecodeSpeed | None = None  # measured on first ask (ModelRegistry.speed), then kept
    refine_step_s: float | None = None  # one token refinement step (ModelRegistry.refine_step_s)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def backbone(self) -> str:
        return str(self.config.info.get("backbone") or self.config.encoder.backbone)

    @property
    def cosine_weight(self) -> float:
        return float(self.config.encoder.cosine_weight)

    @property
    def lam(self) -> str:
        return lambda_label(self.cosine_weight)

    @property
    def display(self) -> str:
        return f"{self.key} · {self.backbone} · λ={self.lam}"

    @property
    def method(self) -> str:
        """The backbone's pre-training method (dino/mae/clip/random), or its description when unknown."""
        return str(self.config.info.get("backbone_method") or self.backbone)

    @property
    def is_main(self) -> bool:
        return bool(self.config.info.get("main"))

    def can(self, ability: Ability) -> bool:
        """Whether the model's folder holds what `ability` needs (from its config: no load)."""
        if ability == "class":
            return self.config.class_generator is not None
        if ability == "text":
            return self.config.text_generator is not None
        return True

    def parameter_count(self) -> int:
        """From the safetensors headers, so the About tab needs no model loaded."""
        from safetensors import safe_open

        files = {self.path / self.config.backbone_file, self.path / "tokenizer.safetensors"}
        files |= {self.path / f"{n}.safetensors" for n in ("class_generator", "text_generator")}
        total = 0
        for file in files:
            if file.is_file():
                with safe_open(str(file), framework="pt") as f:
                    for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                        total += math.prod(f.get_slice(key).get_shape())
        return total


def read_metrics(folder: Path) -> dict[str, object]:
    """A model folder's metrics.json (train/evaluate.py), or {} if it has none or it cannot be read:
    the numbers are shown beside the model, never needed to use it."""
    path = folder / "metrics.json"
    if not path.is_file():
        return {}
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("ignoring %s: %s", path, err)
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _model_dirs(root: Path) -> list[Path]:
    """`root` itself if it is a model folder, else its sub-folders that are."""
    if (root / "config.json").is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "config.json").is_file())


def discover_model_dirs() -> list[Path]:
    """assets/models/*/ plus every folder named in $REPTOK_MODELS_DIR (os.pathsep-separated)."""
    roots = [ASSET_MODELS]
    roots += [Path(p).expanduser() for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p.strip()]
    found: list[Path] = []
    for root in roots:
        for path in _model_dirs(root):
            if path.resolve() not in {p.resolve() for p in found}:
                found.append(path)
    return found


class ModelRegistry:
    """Model folders by label; `get(label)` loads a model on first use (once, even under concurrency).

    `add(folder)` registers one more while the app runs (the official model, once downloaded).
    Readers never lock: `add` builds a new `entries` dict and swaps it in, so a loop over the old
    one is never changed under it; `version` counts the additions (the app's dropdowns compare it)."""

    def __init__(self, model_dirs: Iterable[str | os.PathLike[str]] | None = None) -> None:
        dirs = discover_model_dirs() if model_dirs is None else [Path(p) for p in model_dirs]
        self.entries: dict[str, ModelEntry] = {}
        self.problems: list[str] = []  # folders that could not be read, shown in the About tab
        self.version = 0
        self._add_lock = threading.Lock()
        for path in dirs:
            entry = self._read(path, self.entries)
            if entry is not None:
                self.entries[entry.key] = entry
        # The main model (train/export.py marks the first it exports) leads: it is the default.
        self.entries = dict(sorted(self.entries.items(), key=lambda kv: not kv[1].is_main))

    def _read(self, path: Path, taken: dict[str, ModelEntry]) -> ModelEntry | None:
        """The entry for a model folder (its config only), or None with the reason in `problems`."""
        try:
            config = RepTokConfig.from_dict(json.loads((path / "config.json").read_text()))
        except (OSError, ValueError, TypeError) as err:
            self.problems.append(f"{path}: {err}")
            return None
        key = str(config.info.get("name") or path.name)
        if key in taken:  # two folders with the same name in their config: keep both
            key = f"{key} ({path.name})"
        return ModelEntry(key=key, path=path, config=config)

    def add(self, folder: str | os.PathLike[str]) -> str:
        """Register a model folder while the app runs (thread-safe); its label. A folder already
        registered keeps its label. Added models go last: the default model does not change.
        Raises ValueError when the folder holds no readable config.json."""
        path = Path(folder)
        with self._add_lock:
            for entry in self.entries.values():
                if entry.path.resolve() == path.resolve():
                    return entry.key
            problems = len(self.problems)
            entry = self._read(path, self.entries)
            if entry is None:
                raise ValueError(f"cannot add {path}: {self.problems[problems:][0]}")
            self.entries = {**self.entries, entry.key: entry}  # swapped in whole: see the class doc
            self.version += 1
            return entry.key

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def labels(self) -> list[str]:
        return list(self.entries)

    def choices(self, can: Ability = "reconstruct") -> list[tuple[str, str]]:
        """(shown, value) pairs for a dropdown: the models that can do `can` (every model
        reconstructs; only those with that generator sample by class or by text)."""
        return [(e.display, e.key) for e in self.entries.values() if e.can(can)]

    @property
    def default(self) -> str | None:
        return next(iter(self.entries), None)

    def default_for(self, can: Ability) -> str | None:
        """The default model where it can do `can`, else the first model that can."""
        return next((e.key for e in self.entries.values() if e.can(can)), None)

    def entry(self, label: str | None) -> ModelEntry:
        if not self.entries:
            raise ValueError(NO_MODEL_MESSAGE)
        key = label if label in self.entries else self.default
        assert key is not None
        return self.entries[key]

    def get(self, label: str | None = None) -> RepTok:
        entry = self.entry(label)
        with entry.lock:  # one load per model, even if two requests ask at once
            if entry.model is None:
                model = RepTok.from_pretrained(entry.path)
                entry.model = model.to(dtype=inference_dtype(model))
                entry.metrics = read_metrics(entry.model.source or entry.path)
            return entry.model

    def speed(self, label: str | None = None) -> DecodeSpeed:
        """The model's measured speed on this machine (loading the model; measured once, ~5 steps)."""
        model, entry = self.get(label), self.entry(label)
        with entry.lock:
            if entry.speed is None:
                with torch.inference_mode():
                    entry.speed = measure_speed(model)
            return entry.speed

    def refine_step_s(self, label: str | None = None) -> float:
        """Seconds of one token refinement step (reptok.inversion) on this machine, timed on a blank
        image when first asked (the tabs ask only once refinement is switched on), then kept."""
        model, entry = self.get(label), self.entry(label)
        with entry.lock:
            if entry.refine_step_s is None:
                from PIL import Image

                blank = Image.new("RGB", (model.image_size, model.image_size), "white")

                def step_ends(steps: int) -> list[float]:
                    """perf_counter at the start of the call, then at the end of each step."""
                    ends = [time.perf_counter()]
                    refine(
                        model,
                        blank,
                        config=RefineConfig(steps=steps),
                        progress=lambda *_: ends.append(time.perf_counter()),
                    )
                    return ends

                # A second-long step is timed once, with its call's set-up (encoding the image), small
                # beside it. A fast one again after that warm-up, over its steps 2 to 4 alone.
                first = step_ends(1)
                if first[1] - first[0] > 1.0:
                    entry.refine_step_s = first[1] - first[0]
                else:
                    ends = step_ends(4)
                    entry.refine_step_s = (ends[-1] - ends[1]) / 3
            return entry.refine_step_s

    def observed_decode(self, label: str | None, seconds: float, steps: int, images: int) -> None:
        """A decode that ran for a request took `seconds` for `images` tokens at `steps` steps: where
        that beats the kept speed, scale the speed down to it (the first timing may have run beside a
        page's loading, which slows every part alike)."""
        entry = self.entry(label)
        with entry.lock:
            if entry.speed is not None and (factor := seconds / entry.speed.decode_s(steps, images)) < 1:
                s = entry.speed
                entry.speed = DecodeSpeed(s.encode_s * factor, s.step_s * factor, s.fixed_s * factor)

    def observed_refine_step(self, label: str | None, seconds: float) -> None:
        """A refinement that ran for a request took `seconds` a step: keep the fastest seen, so an
        estimate first timed beside other work (e.g. a page's loading) comes down once one runs alone."""
        entry = self.entry(label)
        with entry.lock:
            if entry.refine_step_s is None or seconds < entry.refine_step_s:
                entry.refine_step_s = seconds

    def comparable(self) -> ModelEntry:
        """The default model, or its same-budget twin (same backbone and λ, another folder) where one
        ships: the default may have trained longer than the ablation runs it would stand beside, and
        the comparison rows should differ in one thing only."""
        main = self.entry(None)
        sha = main.config.backbone_sha256
        twins = (
            e for e in self.entries.values()
            if e is not main and sha and e.config.backbone_sha256 == sha and e.lam == main.lam
        )  # fmt: skip
        return next(twins, main)

    def backbone_row(self) -> list[ModelEntry]:
        """One tokenizer per backbone at the default model's λ (for its backbone: the default, or its
        same-budget twin), in the paper's order: no prior, then CLIP-, MAE-, DINO-style, then others."""
        if not self.entries:
            return []
        main = self.comparable()
        row: dict[str, ModelEntry] = {main.method: main}
        for e in self.entries.values():
            if e.lam == main.lam:
                row.setdefault(e.method, e)
        return sorted(row.values(), key=lambda e: (METHOD_ORDER.get(e.method, len(METHOD_ORDER)), e.key))

    def lambda_row(self) -> list[ModelEntry]:
        """The tokenizers on the default model's backbone, one per λ (at its λ: the default, or its
        same-budget twin), by increasing λ."""
        if not self.entries:
            return []
        main = self.comparable()
        sha = main.config.backbone_sha256
        row: dict[str, ModelEntry] = {main.lam: main}
        for e in self.entries.values():
            if sha and e.config.backbone_sha256 == sha:
                row.setdefault(e.lam, e)
        return sorted(row.values(), key=lambda e: e.cosine_weight)

    def by_lambda(self, lam: str) -> str | None:
        """The first model whose λ label is `lam`, if any."""
        return next((e.key for e in self.entries.values() if e.lam == lam), None)

    def loaded(self) -> Sequence[ModelEntry]:
        return [e for e in self.entries.values() if e.model is not None]


NO_MODEL_MESSAGE = (
    "No RepTok model was found. Put one in `assets/models/<name>/` (config.json + safetensors), "
    f"or point `{MODELS_ENV}` at a folder holding one: train one with the scripts in `train/`, or make "
    "a random one to try the app with `python -m reptok init --out runs/dev/tiny` "
    f"and start the app with `{MODELS_ENV}=runs/dev python app.py`."
)
