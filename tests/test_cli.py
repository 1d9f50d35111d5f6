"""python -m reptok on a tiny saved model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reptok.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


def _write_images(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "apple.png", tmp_path / "car.jpg"
    Image.new("RGB", (48, 48), (220, 20, 20)).save(a)
    Image.new("RGB", (64, 40), (20, 20, 220)).save(b)
    return a, b


def test_info(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "vit_small_patch14_reg4_dinov2" in out
    assert "1 token × 48 floats = 192 bytes" in out
    assert "decoder:" in out and "M parameters" in out and "Food & Drink" in out


def test_reconstruct_writes_one_png_per_input(tiny_model_dir: Path, tmp_path: Path) -> None:
    a, b = _write_images(tmp_path)
    out = tmp_path / "out"
    assert (
        main(
            [
                "reconstruct",
                str(a),
                str(b),
                "--out-dir",
                str(out),
                "--model",
                str(tiny_model_dir),
                "--steps",
                "2",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["apple.png", "car.png"]
    assert Image.open(out / "apple.png").size == (32, 32)
    # --refine-steps: the token refined on the image first (reptok.inversion), another picture
    refined = tmp_path / "refined"
    argv = ["reconstruct", str(a), "--out-dir", str(refined), "--model", str(tiny_model_dir), "--steps", "2"]
    assert main([*argv, "--refine-steps", "5"]) == 0
    assert not np.array_equal(
        np.asarray(Image.open(refined / "apple.png")), np.asarray(Image.open(out / "apple.png"))
    )


def test_reconstruct_reports_bad_files_and_goes_on(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    a, _ = _write_images(tmp_path)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    out = tmp_path / "out"
    assert main(["reconstruct", str(bad), str(a), "--out-dir", str(out), "--model", str(tiny_model_dir)]) == 1
    assert "not an image" in capsys.readouterr().err
    assert (out / "apple.png").is_file()


def test_sample_by_class_and_prompt(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "samples"
    assert (
        main(
            [
                "sample",
                "--class",
                "Food & Drink",
                "--n",
                "3",
                "--out-dir",
                str(out),
                "--model",
                str(tiny_model_dir),
            ]
        )
        == 0
    )
    assert len(list(out.glob("class-Food___Drink-*.png"))) == 3
    assert (
        main(
            [
                "sample",
                "--prompt",
                "red apple",
                "--n",
                "2",
                "--out-dir",
                str(out),
                "--model",
                str(tiny_model_dir),
            ]
        )
        == 0
    )
    assert len(list(out.glob("prompt-red_apple-*.png"))) == 2
    with pytest.raises(SystemExit, match="unknown class"):
        main(["sample", "--class", "Dinosaurs", "--out-dir", str(out), "--model", str(tiny_model_dir)])


def test_interpolate_writes_frames_and_a_gif(tiny_model_dir: Path, tmp_path: Path) -> None:
    a, b = _write_images(tmp_path)
    out = tmp_path / "interp"
    assert (
        main(
            [
                "interpolate",
                str(a),
                str(b),
                "--frames",
                "5",
                "--out-dir",
                str(out),
                "--model",
                str(tiny_model_dir),
            ]
        )
        == 0
    )
    assert len(list(out.glob("frame-*.png"))) == 5
    gif = Image.open(out / "interpolation.gif")
    assert 2 <= gif.n_frames <= 5  # Pillow merges identical consecutive frames


def test_interpolate_between_refined_tokens(tiny_model_dir: Path, tmp_path: Path) -> None:
    """--refine-steps refines each end token on its image: the first frame is `reconstruct
    --refine-steps` of image A (same steps and seed), not the encoder's token's picture."""
    a, b = _write_images(tmp_path)
    model = ["--model", str(tiny_model_dir), "--steps", "2"]

    def first_frame(refine_steps: str) -> np.ndarray:
        out = tmp_path / f"interp-{refine_steps}"
        argv = ["interpolate", str(a), str(b), "--frames", "3", "--out-dir", str(out), *model]
        assert main([*argv, "--refine-steps", refine_steps]) == 0
        return np.asarray(Image.open(out / "frame-000.png"))

    assert main(["reconstruct", str(a), "--out-dir", str(tmp_path / "r"), *model, "--refine-steps", "5"]) == 0
    refined = first_frame("5")
    assert np.array_equal(refined, np.asarray(Image.open(tmp_path / "r" / "apple.png")))
    assert not np.array_equal(refined, first_frame("0"))


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no RepTok model"):
        main(["info", "--model", str(tmp_path)])


def test_module_entry_point_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reptok", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    for command in ("reconstruct", "sample", "interpolate", "info"):
        assert command in result.stdout
