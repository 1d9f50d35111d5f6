"""train/evaluate.py end to end on tiny synthetic data: every metric present, named, in range."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reptok.metrics import FeatureSpace
from reptok.pipeline import RepTok
from tests.helpers import CATEGORIES, COLOURS, randomize_, shape_image, tiny_config, write_shapes_npz
from train import evaluate, sample_metrics
from train import pretrain_backbone as pb

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(1)
    labels = [(i // 2) % 3 for i in range(24)]
    images = [shape_image(c, COLOURS[c], rng) for c in labels]
    splits = ["heldout" if i // 2 in (0, 4, 8) else "train" for i in range(24)]
    data = write_shapes_npz(root / "shapes.npz", images, labels, splits)
    features = root / "random-backbone"
    pb.main(["--method", "random", "--preset", "test", "--data", str(data), "--out", str(features)])
    config = tiny_config()
    config.class_names = sorted(CATEGORIES)
    torch.manual_seed(0)
    model = RepTok.from_config(config)
    for module in (model.decoder, model.class_generator, model.text_generator):
        randomize_(module)
    model.save_pretrained(root / "model")
    return data, features, root / "model"


def test_evaluate_writes_named_metrics(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, features, model = setup
    out = tmp_path / "metrics.json"
    metrics = evaluate.main(["--model", str(model), "--data", str(data), "--features", str(features),
                             "--n", "6", "--steps", "2", "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == metrics
    space = metrics["feature_space"]
    assert space.startswith("random-") and metrics["n"] == 6
    assert not any(key.startswith("FID") for key in metrics)  # not Inception features: never called FID
    for key in ("psnr", "ssim", "cos_to_frozen", f"rFD_{space}", f"gFD_{space}", f"class_probe_acc_{space}",
                f"text_gFD_{space}", f"text_retrieval_top1_{space}", f"text_retrieval_top5_{space}"):  # fmt: skip
        assert key in metrics and math.isfinite(metrics[key]), key
    assert 0 <= metrics[f"class_probe_acc_{space}"] <= 1
    # the references: the same probe on the real images, the same retrieval for the reconstructions
    for key in (
        f"class_probe_acc_real_{space}",
        f"class_probe_acc_recon_{space}",
        f"recon_top5_same_code_{space}",
    ):
        assert 0 <= metrics[key] <= 1, key
    assert metrics[f"text_retrieval_top1_{space}"] <= metrics[f"text_retrieval_top5_{space}"] <= 1
    assert metrics["cos_to_frozen"] == pytest.approx(1.0, abs=1e-4)  # an untrained token has not moved
    # the same run twice gives the same numbers (seeded noise everywhere), also with the probe's bank cached
    again = evaluate.main(["--model", str(model), "--data", str(data), "--features", str(features),
                           "--n", "6", "--steps", "2", "--out", str(tmp_path / "again.json"),
                           "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert again["psnr"] == metrics["psnr"] and again[f"gFD_{space}"] == metrics[f"gFD_{space}"]
    assert again[f"class_probe_acc_{space}"] == metrics[f"class_probe_acc_{space}"]
    assert len(list((tmp_path / "cache").glob("probe-bank-*.npy"))) == 1


def test_probe_bank_is_computed_once_per_feature_network_and_images(tmp_path: Path) -> None:
    calls: list[int] = []

    def extract(images: torch.Tensor) -> torch.Tensor:
        calls.append(len(images))
        return images.flatten(1)[:, :4]

    space = FeatureSpace("toy-1234", extract)
    images = torch.rand(5, 3, 8, 8)
    bank = sample_metrics.probe_bank(space, images, tmp_path)
    assert torch.equal(sample_metrics.probe_bank(space, images, tmp_path), bank) and len(calls) == 1
    assert torch.equal(sample_metrics.probe_bank(space, images), bank)  # no cache: the same numbers
    sample_metrics.probe_bank(space, images.flip(0), tmp_path)  # other images: never the stale bank
    sample_metrics.probe_bank(FeatureSpace("toy-5678", extract), images, tmp_path)  # another network
    assert len(calls) == 4 and len(list(tmp_path.glob("probe-bank-*.npy"))) == 3


def test_help() -> None:
    result = subprocess.run(
        [sys.executable, "train/evaluate.py", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0 and "NOT FID" in result.stdout


def test_decode_sweep_rows_match_evaluate_at_the_same_setting(
    setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """train/decode_sweep.py: one row per setting; at τ = 1 it is evaluate.py's reconstruction."""
    from train import decode_sweep

    data, features, model = setup
    rows = decode_sweep.main(["--model", str(model), "--data", str(data), "--features", str(features),
                              "--n", "6", "--steps", "1", "2", "--temperature", "1", "0.5",
                              "--out", str(tmp_path / "sweep.json")])  # fmt: skip
    assert [(r["steps"], r["temperature"]) for r in rows] == [(1, 1.0), (1, 0.5), (2, 1.0), (2, 0.5)]
    assert json.loads((tmp_path / "sweep.json").read_text())["rows"] == rows
    ref = evaluate.main(["--model", str(model), "--data", str(data), "--features", str(features),
                         "--n", "6", "--steps", "2", "--refine-steps", "3", "--out", str(tmp_path / "m.json")])  # fmt: skip
    assert rows[2]["psnr"] == pytest.approx(ref["psnr"], abs=1e-4)
    assert rows[2]["identification"] == ref["identification"]
    assert rows[2]["psnr"] != rows[3]["psnr"]  # the temperature reaches the sampler
    # Refined tokens (reptok.inversion): a row per refinement setting, the encoder's row unchanged.
    refined = decode_sweep.main(["--model", str(model), "--data", str(data), "--n", "6", "--steps", "2",
                                 "--refine-steps", "0", "3"])  # fmt: skip
    assert [r["refine_steps"] for r in refined] == [0, 3] and "refine_s" in refined[1]
    assert refined[0]["psnr"] == pytest.approx(rows[2]["psnr"], abs=1e-6)
    assert refined[1]["psnr"] != refined[0]["psnr"] and refined[1]["cos_to_encoder"] < 1.0
    # evaluate.py --refine-steps: the same refined tokens, decoded with the same seeds
    assert ref["refined_steps"] == 3 and ref["refined_psnr"] == pytest.approx(refined[1]["psnr"], abs=1e-4)
    assert ref["refined_identification"] == refined[1]["identification"]
    assert ref["refined_cos_to_encoder"] == pytest.approx(refined[1]["cos_to_encoder"], abs=1e-5)


def test_guidance_sweep_rows_match_evaluate_at_the_model_scale(
    setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """train/guidance_sweep.py: one row per (condition, temperature, scale); at the model's own
    cfg_scale and T = 1 it is evaluate.py's class and text sample metrics, and both the scale and the
    temperature reach the sampler."""
    from train import guidance_sweep

    data, features, model = setup
    scale = RepTok.from_pretrained(model).config.sampling.cfg_scale
    rows = guidance_sweep.main(["--model", str(model), "--data", str(data), "--features", str(features),
                                "--n", "6", "--steps", "2", "--cfg-scale", str(scale), "4",
                                "--temperature", "1", "0.5", "--out", str(tmp_path / "sweep.json"),
                                "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    # the probe's bank of training features: one file for the sweep's four class rows
    assert len(list((tmp_path / "cache").glob("probe-bank-*.npy"))) == 1
    assert [(r["cond"], r["temperature"], r["cfg_scale"]) for r in rows] == [
        (cond, temperature, cfg)
        for cond in ("class", "text")
        for temperature in (1.0, 0.5)
        for cfg in (scale, 4.0)
    ]
    assert json.loads((tmp_path / "sweep.json").read_text())["rows"] == rows
    ref = evaluate.main(["--model", str(model), "--data", str(data), "--features", str(features),
                         "--n", "6", "--steps", "2", "--out", str(tmp_path / "m.json")])  # fmt: skip
    space = ref["feature_space"]
    assert rows[0][f"gFD_{space}"] != rows[2][f"gFD_{space}"]  # T = 0.5 against T = 1 at the same scale
    rows = [r for r in rows if r["temperature"] == 1.0]
    for key in (f"gFD_{space}", f"class_probe_acc_{space}"):
        assert rows[0][key] == pytest.approx(ref[key], abs=1e-4), key
    for key in (f"text_gFD_{space}", f"text_retrieval_top5_{space}"):
        assert rows[2][key] == pytest.approx(ref[key], abs=1e-4), key
    assert rows[0][f"gFD_{space}"] != rows[1][f"gFD_{space}"]
    assert rows[2][f"text_gFD_{space}"] != rows[3][f"text_gFD_{space}"]
    # no --cfg-interval: each generator's own default interval, recorded per row and in metrics.json
    sampling = RepTok.from_pretrained(model).config.sampling
    assert [r["cfg_interval"] for r in rows] == [list(sampling.guidance_interval(r["cond"])) for r in rows]
    assert (ref["cfg_interval"], ref["text_cfg_interval"]) == ([*sampling.cfg_interval],) * 2


def test_guidance_sweep_over_intervals(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """--cfg-interval and --seed are more axes: each interval and each seed reaches the sampler; a
    malformed interval is refused."""
    from train import guidance_sweep

    data, features, model = setup
    common = ["--model", str(model), "--data", str(data), "--features", str(features), "--n", "6",
              "--steps", "2", "--cfg-scale", "4", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    rows = guidance_sweep.main([*common, "--cfg-interval", "0.3,0.9", "0,1", "--seed", "0", "1"])
    assert [(r["cond"], r["cfg_interval"], r["seed"]) for r in rows] == [
        (cond, interval, seed)
        for cond in ("class", "text")
        for interval in ([0.3, 0.9], [0.0, 1.0])
        for seed in (0, 1)
    ]
    gfd = [v for r in rows for k, v in r.items() if k.startswith(("gFD_", "text_gFD_"))]
    assert len(set(gfd)) == len(gfd)  # every interval and every seed draws other samples
    for bad in ("0.9,0.3", "0.5", "a,b", "0,2"):
        with pytest.raises(SystemExit):
            guidance_sweep.parse_args([*common, "--cfg-interval", bad])
