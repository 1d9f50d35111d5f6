"""bench/ end to end on a tiny model and tiny data: each script runs and writes well-formed results.

Nothing here is about speed: the benchmarks measure it, tests never assert a wall-clock time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import cpu_attention, efficiency, latency
from bench.app_process import AppProbe, measure_app
from bench.common import markdown_table, percentile, write_results
from bench.efficiency_report import flops_to_reach
from reptok.manifold import fit_2d, save_manifold
from reptok.pipeline import RepTok
from tests.helpers import CLASS_NAMES, COLOURS, shape_image, write_shapes_npz
from train import pretrain_backbone as pb

ACTIONS = {
    "reconstruct",
    "variations",
    "reconstruct_refine_25",
    "class_16",
    "text_16",
    "interpolate_8",
    "interpolate_8_refine_25",
    "manifold",
}


@pytest.fixture(scope="module")
def shapes_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 coloured shapes (kind = category), both styles of every third pair held out: 24 train, 6 held out."""
    rng = np.random.default_rng(2)
    kinds = [i % 3 for i in range(30)]
    splits = ["heldout" if (i // 2) % 5 == 0 else "train" for i in range(30)]
    images = [shape_image(k, COLOURS[(k + 1) % 3], rng) for k in kinds]
    return write_shapes_npz(tmp_path_factory.mktemp("bench-data") / "shapes.npz", images, kinds, splits)


@pytest.fixture(scope="module")
def manifold(tiny_model: RepTok, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokens = torch.randn(16, tiny_model.token_dim, generator=torch.Generator().manual_seed(0)).numpy()
    settings = {"1": {"xy": fit_2d(tokens, method="pca"), "tokens": tokens}}
    path = tmp_path_factory.mktemp("bench-manifold") / "manifold.npz"
    return save_manifold(
        path, names=[f"e{i}" for i in range(16)], categories=["a", "b"] * 8, settings=settings
    )


def _section(out: Path, name: str) -> str:
    text = (out / "RESULTS.md").read_text()
    assert text.count(f"<!-- {name}:begin -->") == 1 and text.count(f"<!-- {name}:end -->") == 1
    return text.split(f"<!-- {name}:begin -->")[1].split(f"<!-- {name}:end -->")[0]


def _latency(model: Path, data: Path, manifold: Path, out: Path, *samplers: str) -> dict:
    return latency.main([
        "--model", str(model), "--data", str(data), "--manifold", str(manifold), "--steps", "2",
        "--sampler", *samplers, "--repeats", "1", "--warmup", "1", "--quality-n", "3", "--matmul-size", "64",
        "--threads", str(torch.get_num_threads()), "--skip-app", "--out", str(out),
    ])  # fmt: skip


def test_latency_writes_json_and_table(
    tiny_model_dir: Path, shapes_npz: Path, manifold: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(latency, "EXAMPLES_DIR", tmp_path / "no-examples")  # images from the .npz
    payload = _latency(tiny_model_dir, shapes_npz, manifold, tmp_path, "euler", "heun")
    assert json.loads((tmp_path / "latency.json").read_text()) == payload
    for key in ("cpu", "cores", "torch", "threads"):
        assert payload["machine"][key]
    assert payload["peak_gflop_per_s"] > 0
    rows = payload["actions"]
    assert {r["setting"] for r in rows} == {"euler × 2", "heun × 2"}
    assert {r["action"] for r in rows} == ACTIONS
    for row in rows:
        assert "skipped" not in row, row  # the tiny model samples by class and text; a manifold is given
        assert row["median_s"] <= row["p90_s"] and row["gflop"] > 0 and math.isfinite(row["fraction_of_peak"])
    assert set(payload["quality"]["settings"]) == {"euler × 2", "heun × 2"}
    assert payload["quality"]["n"] == 3 and "held-out" in payload["quality"]["source"]
    section = _section(tmp_path, "latency")
    assert "| setting | action | median s | p90 s |" in section and "| heun × 2 | text_16 |" in section
    assert "| setting | PSNR dB | SSIM |" in section

    # Again without a manifold cache: that action is skipped with a reason, the section replaced.
    _latency(tiny_model_dir, shapes_npz, tmp_path / "none.npz", tmp_path, "euler")
    again = json.loads((tmp_path / "latency.json").read_text())
    assert {r["action"]: r.get("skipped") for r in again["actions"]}[
        "manifold"
    ] == "skipped: no manifold cache"
    section = _section(tmp_path, "latency")
    assert "skipped: no manifold cache" in section and "heun" not in section


@pytest.mark.slow
def test_app_process_answers_and_reports_memory(tiny_model_dir: Path, manifold: Path, tmp_path: Path) -> None:
    upload = tmp_path / "a.png"
    RepTok.to_pil(torch.rand(1, 3, 40, 40) * 2 - 1)[0].save(upload)
    probe = AppProbe(
        uploads=[str(upload)] * 2, class_name=CLASS_NAMES[0], prompt="red apple", steps=2, samples=2, frames=2
    )
    result = measure_app(tiny_model_dir, probe, manifold=manifold, timeout_s=240)
    assert result["label"] == "tiny" and result["first_answer_s"] >= result["server_up_s"] > 0
    assert result["peak_rss_bytes"] > 0 and not result["skipped_endpoints"]
    assert set(result["endpoints_s"]) == {"/reconstruct", "/variations", "/interpolate", "/manifold",
                                          "/sample_class", "/sample_text"}  # fmt: skip


def test_efficiency_writes_json_and_table(
    tiny_model_dir: Path, shapes_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # main sets it for --device cpu; restored after
    features = tmp_path / "random-backbone"
    pb.main(["--method", "random", "--preset", "test", "--data", str(shapes_npz), "--out", str(features)])
    payload = efficiency.main([
        "--model", str(tiny_model_dir), "--features", str(features), "--data", str(shapes_npz),
        "--budget-s", "0.2", "--checkpoints", "2", "--eval-n", "4", "--eval-batch", "4", "--eval-steps", "1",
        "--batch-size", "4", "--mixer-width", "32", "--mixer-depth", "1", "--dit-preset", "test",
        "--device", "cpu", "--threads", str(torch.get_num_threads()), "--matmul-size", "64", "--out", str(tmp_path),
    ])  # fmt: skip
    assert json.loads((tmp_path / "efficiency.json").read_text()) == payload
    metric = payload["metric"]
    assert metric.startswith("gFD_random-") and "FID" not in metric
    assert set(payload["sides"]) == {"reptok", "dit"}
    for side in payload["sides"].values():
        curve = side["curve"]
        assert len(curve) == 3 and curve[0]["step"] == 0 and side["steps"] == curve[-1]["step"] >= 1
        assert all(math.isfinite(p["gfd"]) for p in curve)
        assert [p["train_flops"] for p in curve] == sorted(p["train_flops"] for p in curve)
        assert side["flops_per_step"] > 0 and side["parameters"] > 0
    assert set(payload["sides"]["reptok"]["sample_flops_per_image"]) == {"generate", "decode"}
    assert payload["token_cache"]["images"] == 24 and payload["token_cache"]["flops"] > 0
    assert len(payload["comparison"]) == 2
    section = _section(tmp_path, "efficiency")
    assert "| generator | generates | parameters |" in section and f"| target {metric} |" in section
    assert "never called FID" not in section and "(not FID)" in section


def test_cpu_attention_writes_json_and_tables(tmp_path: Path) -> None:
    payload = cpu_attention.main(["--scale", "test", "--repeats", "1", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "cpu_attention.json").read_text()) == payload
    (row,) = payload["attention"]
    for variant in ("fused", "math", "written out"):
        assert row[f"{variant} ms"] > 0 and 0 < row[f"{variant} error"] < 0.1  # bf16-sized, not broken
    assert len(payload["steps"]) == len(cpu_attention.step_builders("test"))
    assert all(r["written out s"] > 0 and math.isfinite(r["speed-up"]) for r in payload["steps"])
    section = _section(tmp_path, "cpu_attention")
    assert section.count("\n|") >= 2 + len(payload["steps"]) + 2  # both tables, headers and rows


def test_flops_to_reach_interpolates_and_says_never() -> None:
    curve = [
        {"train_flops": 0.0, "gfd": 10.0},
        {"train_flops": 100.0, "gfd": 6.0},
        {"train_flops": 200.0, "gfd": 2.0},
    ]
    assert flops_to_reach(curve, 10.0) == 0.0
    assert flops_to_reach(curve, 8.0) == pytest.approx(50.0)
    assert flops_to_reach(curve, 3.0) == pytest.approx(175.0)
    assert flops_to_reach(curve, 1.0) is None


def test_results_file_keeps_other_sections(tmp_path: Path) -> None:
    write_results(tmp_path, "a", {"x": 1}, markdown_table(["h"], [[1]]))
    write_results(tmp_path, "b", {"y": 2}, "B")
    write_results(tmp_path, "a", {"x": 3}, "A2")
    text = (tmp_path / "RESULTS.md").read_text()
    assert "A2" in text and "| h |" not in text and "B" in _section(tmp_path, "b")
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 3}
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([5.0], 90) == 5.0
