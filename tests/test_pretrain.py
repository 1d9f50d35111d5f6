"""train/pretrain_backbone.py (and its ssl_methods, ssl_views, knn) on tiny synthetic emoji files:
every method, the k-NN probe, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from reptok.encoder import ENCODER_PRESETS, EncoderConfig, create_backbone
from tests.helpers import COLOURS, shape_image, write_shapes_npz
from train import knn
from train import pretrain_backbone as pb
from train import ssl_methods as sm
from train import ssl_views as sv
from train.data import EmojiDataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 coloured shapes, 3 categories (= shape), 18 train / 6 held out (one emoji per category)."""
    rng = np.random.default_rng(0)
    labels = [(i // 2) % 3 for i in range(24)]
    images = [shape_image(c, COLOURS[int(rng.integers(3))], rng) for c in labels]
    splits = ["heldout" if i // 2 in (0, 4, 8) else "train" for i in range(24)]
    return write_shapes_npz(tmp_path_factory.mktemp("data") / "shapes.npz", images, labels, splits)


@pytest.fixture(scope="module")
def solid_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trivially separable: every image of a category is the same solid colour; 20 per category train."""
    labels = [c for c in range(3) for _ in range(24)]
    images = [np.full((64, 64, 3), COLOURS[c], dtype=np.uint8) for c in labels]
    splits = ["heldout" if i % 24 >= 20 else "train" for i in range(len(labels))]
    return write_shapes_npz(tmp_path_factory.mktemp("data") / "solid.npz", images, labels, splits)


def _run(method: str, data: Path, out: Path, *extra: str) -> dict:
    return pb.main(["--method", method, "--preset", "test", "--data", str(data), "--out", str(out), *extra])


def _load_strict(out: Path) -> VisionTransformer:
    config = json.loads((out / "config.json").read_text())
    backbone = create_backbone(EncoderConfig.from_dict(config["encoder"]))
    backbone.load_state_dict(load_file(str(out / "backbone.safetensors")), strict=True)
    return backbone


@pytest.mark.parametrize("method", ["dino", "mae", "clip", "dae"])
def test_method_trains_and_writes_a_plain_backbone(method: str, shapes_npz: Path, tmp_path: Path) -> None:
    config = _run(method, shapes_npz, tmp_path)
    assert config["method"] == method and config["steps"] == pb.PRESETS["test"].train[method].steps
    assert config["encoder"] == ENCODER_PRESETS["test"].to_dict()
    backbone = _load_strict(tmp_path)
    state = load_file(str(tmp_path / "backbone.safetensors"))
    assert all(v.dtype == torch.float32 for v in state.values())
    assert set(state) == set(create_backbone(ENCODER_PRESETS["test"]).state_dict())  # no heads, no decoder
    assert all(torch.isfinite(p).all() for p in backbone.parameters())
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == config["steps"] and all(np.isfinite(losses))
    for key in ("category", "subcategory"):
        assert 0.0 <= config["knn"][key] <= 1.0
    assert any(r.get("event") == "knn" for r in records)
    # Trained: the exported weights differ from the seed's initial ones.
    initial = sv.build_backbone(ENCODER_PRESETS["test"], 0, pb.PRESETS["test"].layer_scale_init)
    assert any(not torch.equal(v, state[k]) for k, v in initial.state_dict().items())


def test_random_is_the_seeds_init(shapes_npz: Path, tmp_path: Path) -> None:
    config = _run("random", shapes_npz, tmp_path / "a", "--seed", "3")
    _run("random", shapes_npz, tmp_path / "b", "--seed", "3")
    _run("random", shapes_npz, tmp_path / "c", "--seed", "4")
    a, b, c = (load_file(str(tmp_path / x / "backbone.safetensors")) for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert config["steps"] == 0 and config["train_config"] is None
    _load_strict(tmp_path / "a")


def test_dino_resume_matches_an_uninterrupted_run(
    shapes_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The teacher, centre and step live in buffers, so a killed run continues exactly."""
    _run("dino", shapes_npz, tmp_path / "full", "--ckpt-every", "2")
    forward = sm.DinoMethod.forward

    def killed_at_step_3(self: sm.DinoMethod, batch: dict, gen: torch.Generator) -> tuple:
        if int(self.step) == 2:
            raise KeyboardInterrupt  # after the step-2 checkpoint
        return forward(self, batch, gen)

    monkeypatch.setattr(sm.DinoMethod, "forward", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        _run("dino", shapes_npz, tmp_path / "cut", "--ckpt-every", "2")
    monkeypatch.undo()
    _run("dino", shapes_npz, tmp_path / "cut", "--ckpt-every", "2", "--resume")
    full = load_file(str(tmp_path / "full" / "backbone.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "backbone.safetensors"))
    for key, value in full.items():
        torch.testing.assert_close(cut[key], value, rtol=0, atol=0)


def test_knn_is_perfect_on_a_trivially_separable_set(solid_npz: Path) -> None:
    train = EmojiDataset(solid_npz, "train", image_size=32)
    heldout = EmojiDataset(solid_npz, "heldout", image_size=32)
    for layer_scale in (None, 0.1):  # timm's own init, and the one training starts from
        backbone = sv.build_backbone(ENCODER_PRESETS["test"], 0, layer_scale)
        result = knn.knn_accuracy(backbone, train, heldout, label_keys=("category", "label"), k=20)
        assert result["category"] == 1.0 and result["label"] == 1.0
        assert result["n_bank"] == 60 and result["n_query"] == 12


def test_forward_visible_with_every_patch_is_the_plain_forward() -> None:
    """The MAE encoder path, for both timm layouts: DINOv2 (no pos for prefix) and classic ViT."""
    x = torch.randn(2, 3, 32, 32)
    small = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2}
    for name in ("vit_small_patch14_reg4_dinov2", "vit_base_patch16_224"):
        vit = create_backbone(EncoderConfig(backbone=name, backbone_kwargs=small, image_size=32)).eval()
        keep = torch.arange(16).expand(2, -1)
        torch.testing.assert_close(sv.forward_visible(vit, x, keep), vit.forward_features(x))
        shuffled = torch.stack([torch.randperm(16)[:4] for _ in range(2)])  # (B, K) visible subset
        assert sv.forward_visible(vit, x, shuffled).shape == (2, vit.num_prefix_tokens + 4, 48)


def test_augmented_views_have_the_right_shape_and_range() -> None:
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    crops = sv.random_resized_crop(images, 32, (0.1, 0.4), gen)
    views = sv.color_augment((crops + 1) / 2, gen, blur_p=1.0, solarize_p=1.0)
    assert views.shape == (4, 3, 32, 32) and views.min() >= 0 and views.max() <= 1
    again = sv.random_resized_crop(images, 32, (0.1, 0.4), torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, crops)  # the step generator alone decides the views


def test_sinkhorn_targets_are_distributions_and_balanced() -> None:
    logits = torch.randn(16, 8) * 0.1 + torch.linspace(0, 1, 8)  # every image prefers prototype 7
    q = sm.sinkhorn_knopp(logits, temperature=0.05, iterations=20)
    torch.testing.assert_close(q.sum(1), torch.ones(16))
    torch.testing.assert_close(q.sum(0), torch.full((8,), 2.0), atol=1e-3, rtol=0)  # B / K each
    spread = torch.randn(8, 32, requires_grad=True)
    sm.koleo_loss(spread).backward()
    assert torch.isfinite(spread.grad).all()


def test_help() -> None:
    result = subprocess.run(
        [sys.executable, "train/pretrain_backbone.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--method", "--preset", "--data", "--out", "--steps", "--resume", "--knn-every"):
        assert flag in result.stdout
