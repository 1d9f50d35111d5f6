"""Frozen text encoders: MiniLM offline, and any transformers model by name or folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reptok.text import FrozenTextEncoder, TextEncoderConfig, minilm_path, sentence_embedding


@pytest.fixture(scope="module")
def minilm() -> FrozenTextEncoder:
    return FrozenTextEncoder(TextEncoderConfig())


def test_minilm_offline_hidden_states_and_mask(minilm: FrozenTextEncoder) -> None:
    hidden, mask = minilm(["red apple", "smiling face with sunglasses"])
    assert minilm.dim == 384
    assert hidden.shape[0] == 2 and hidden.shape[-1] == 384 and mask.shape == hidden.shape[:2]
    assert mask[1].all() and not mask[0].all()  # the shorter prompt is padded
    assert torch.isfinite(hidden).all()
    assert not any(p.requires_grad for p in minilm.parameters())


def test_minilm_embeddings_carry_meaning(minilm: FrozenTextEncoder) -> None:
    pooled = sentence_embedding(*minilm(["red apple", "green apple", "police car"]))  # (3, 384)
    apples = float(pooled[0] @ pooled[1])
    apple_car = float(pooled[0] @ pooled[2])
    assert apples > apple_car + 0.1, (apples, apple_car)


def test_sentence_embedding_is_sentence_transformers(minilm: FrozenTextEncoder) -> None:
    """The pooled prompt the text generator reads is the embedding MiniLM's own library gives."""
    from sentence_transformers import SentenceTransformer

    prompts = ["red apple", "smiling face with sunglasses, sunglasses", "a cat"]
    reference = SentenceTransformer(str(minilm_path()), device="cpu").encode(prompts, convert_to_tensor=True)
    torch.testing.assert_close(sentence_embedding(*minilm(prompts)), reference.float(), atol=1e-5, rtol=1e-4)


def test_long_and_empty_prompts(minilm: FrozenTextEncoder) -> None:
    hidden, mask = minilm(["word " * 2000, ""])
    assert hidden.shape[1] == minilm.config.max_length  # truncated
    assert mask[1].sum() == 2  # [CLS] [SEP]


def test_any_transformers_model_by_folder(tmp_path: Path) -> None:
    # A tiny randomly initialised BERT with MiniLM's tokenizer, saved as a transformers folder:
    # the same code path as a hub name, without the network.
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path / "tiny-bert"
    AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(folder)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(folder)
    enc = FrozenTextEncoder(TextEncoderConfig(name=str(folder), max_length=8))
    hidden, mask = enc(["blue car"])
    assert enc.dim == 32 and hidden.shape == (1, mask.shape[1], 32)
