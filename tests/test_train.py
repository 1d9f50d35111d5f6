"""The training scripts end to end on a tiny image folder: stage A, stage B, exact resume, clear errors.

The scripts' main(argv) run in-process with the "test" presets (seconds on a CPU); one subprocess
per script checks the command line itself.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # train/ is a folder of scripts, not an installed package

from reptok.pipeline import RepTok  # noqa: E402
from tests.helpers import assert_same_state, stage_a_args  # noqa: E402
from train import train_generator, train_tokenizer  # noqa: E402
from train.batches import resumable_batches, step_generator  # noqa: E402
from train.common import Trainer  # noqa: E402
from train.loop_config import TrainConfig, config_differences  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stage_a") / "run"
    train_tokenizer.main(stage_a_args(data_dir, out, "--lam", "0.5"))
    return out


def test_stage_a_saves_a_model_that_reconstructs(tokenizer_run: Path) -> None:
    model = RepTok.from_pretrained(tokenizer_run / "model")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model.reconstruct(images, steps=2, output_type="pt")
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    assert model.config.info["preset"] == "test" and model.config.info["steps"] == 4
    records = [json.loads(line) for line in (tokenizer_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    ckpt = torch.load(tokenizer_run / "checkpoint.pt", weights_only=True)  # plain types only
    assert ckpt["step"] == 4 and ckpt["run_config"]["preset"] == "test"


def test_lambda_inf_freezes_the_token_and_finite_lambda_moves_it(
    tokenizer_run: Path, data_dir: Path, tmp_path: Path
) -> None:
    moved = load_file(tokenizer_run / "model" / "tokenizer.safetensors")
    assert not torch.equal(moved["encoder.cls_token"], moved["encoder.frozen_cls_token"])
    train_tokenizer.main(stage_a_args(data_dir, tmp_path / "frozen", "--lam", "inf", "--steps", "2"))
    frozen = load_file(tmp_path / "frozen" / "model" / "tokenizer.safetensors")
    assert torch.equal(frozen["encoder.cls_token"], frozen["encoder.frozen_cls_token"])
    assert torch.equal(frozen["encoder.frozen_cls_token"], moved["encoder.frozen_cls_token"])  # same seed


def test_stage_a_starts_from_a_saved_models_backbone_and_original_token(
    tokenizer_run: Path, data_dir: Path, tmp_path: Path
) -> None:
    """--backbone <RepTok folder>: the shipped models' SSL backbone, with the [cls] embedding it started
    from (not its adapted one), so a longer stage A on it is a fresh run on the same backbone."""
    source = RepTok.from_pretrained(tokenizer_run / "model")
    args = stage_a_args(
        data_dir, tmp_path / "again", "--backbone", str(tokenizer_run / "model"), "--steps", "2"
    )
    model = RepTok.from_pretrained(train_tokenizer.main([*args, "--lam", "0.25"]))
    original = source.encoder.frozen_cls_token
    assert torch.equal(model.encoder.frozen_cls_token, original)  # the anchor is the original token
    assert not torch.equal(source.encoder.backbone.cls_token, original)  # the source's token had moved
    assert model.backbone_sha256() == source.backbone_sha256()  # same frozen weights, so stored once
    assert model.config.encoder.cosine_weight == 0.25
    assert model.config.info["backbone_method"] == source.config.info["backbone_method"]
    assert str(tokenizer_run / "model") in model.config.info["backbone"]


def _assert_same_checkpoint(run_a: Path, run_b: Path, step: int) -> None:
    a = torch.load(run_a / "checkpoint.pt", weights_only=True)
    b = torch.load(run_b / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == step
    for part in ("model", "ema", "optimizer"):
        assert_same_state(a[part], b[part])


def test_resume_ends_at_bitwise_the_same_weights(data_dir: Path, tmp_path: Path) -> None:
    base = ["--lam", "0.5", "--ckpt-every", "1"]
    train_tokenizer.main(stage_a_args(data_dir, tmp_path / "straight", *base, "--steps", "6"))
    train_tokenizer.main(stage_a_args(data_dir, tmp_path / "split", *base, "--steps", "3"))
    train_tokenizer.main(stage_a_args(data_dir, tmp_path / "split", *base, "--steps", "6", "--resume"))
    _assert_same_checkpoint(tmp_path / "straight", tmp_path / "split", step=6)
    for name in ("tokenizer.safetensors", "backbone.safetensors"):
        assert_same_state(
            load_file(tmp_path / "straight" / "model" / name), load_file(tmp_path / "split" / "model" / name)
        )
    steps = [
        json.loads(line).get("step") for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()
    ]
    assert [s for s in steps if s] == [1, 2, 3, 3, 3, 4, 5, 6, 6]  # start/done/resume events carry a step too


def test_max_minutes_stops_cleanly_and_resume_finishes_the_run(data_dir: Path, tmp_path: Path) -> None:
    base = ["--lam", "0.5", "--ckpt-every", "100"]
    train_tokenizer.main(stage_a_args(data_dir, tmp_path / "straight", *base, "--steps", "4"))
    # A limit already past after the first step: it checkpoints and saves the model there.
    train_tokenizer.main(
        stage_a_args(data_dir, tmp_path / "cut", *base, "--steps", "4", "--max-minutes", "1e-9")
    )
    records = [json.loads(line) for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert records[-1] == {"event": "time_limit", "step": 1, "max_minutes": 1e-9}  # and not "done"
    assert RepTok.from_pretrained(tmp_path / "cut" / "model").config.info["steps"] == 1
    train_tokenizer.main(stage_a_args(data_dir, tmp_path / "cut", *base, "--steps", "4", "--resume"))
    _assert_same_checkpoint(tmp_path / "straight", tmp_path / "cut", step=4)


def test_stage_b_resumes_exactly(tokenizer_run: Path, data_dir: Path, tmp_path: Path) -> None:
    def run(out: str, steps: int, *extra: str) -> None:
        args = ["--preset", "test", "--tokenizer", str(tokenizer_run / "model"), "--data", str(data_dir)]
        train_generator.main(
            [*args, "--out", str(tmp_path / out), "--steps", str(steps), "--ckpt-every", "1", *extra]
        )

    run("straight", 4)
    run("split", 2)
    run("split", 4, "--resume")
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert_same_state(a["ema"], b["ema"])
    assert_same_state(a["optimizer"], b["optimizer"])


def test_stage_b_class_then_text_samples(tokenizer_run: Path, data_dir: Path, tmp_path: Path) -> None:
    common = ["--preset", "test", "--data", str(data_dir)]
    class_model = train_generator.main(
        [*common, "--tokenizer", str(tokenizer_run / "model"), "--out", str(tmp_path / "c")]
    )
    text_args = ["--tokenizer", str(class_model), "--cond", "text", "--out", str(tmp_path / "t")]
    both = train_generator.main([*common, *text_args])
    tokens = torch.load(tmp_path / "t" / "tokens.pt", weights_only=True)
    assert tokens["z"].shape == (len(tokens["captions"]), 1, 48) and tokens["text"]["hidden"].shape[-1] == 384

    model = RepTok.from_pretrained(both)
    assert model.config.class_names == ["circle", "square"]
    info = model.config.info["class_generator"]  # how it was trained, as the tokenizer's info says
    assert info["decay_steps"] == 0 and info["precision"] == "auto" and info["steps"] > 0
    assert not (both / "backbone.safetensors").exists()  # referenced from the stage-A folder, not copied
    assert model.config.backbone_file.startswith("../")
    kwargs = {"steps": 2, "decode_steps": 2, "output_type": "pt"}
    by_class = model.sample(labels=["circle", 1], **kwargs)
    by_text = model.sample(prompts=["a red circle", "a blue square"], **kwargs)
    for images in (by_class, by_text):
        assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()


def test_stage_b_either_order_makes_the_same_generators(
    tokenizer_run: Path, data_dir: Path, tmp_path: Path
) -> None:
    """reproduce.sh cpu trains the default's text generator first and its class generator on that
    output (both beside the ablation rows): the same two generators as class first, then text."""
    common = ["--preset", "test", "--data", str(data_dir)]
    tok = str(tokenizer_run / "model")

    def train(first: str, second: str, out: str) -> RepTok:
        a = train_generator.main(
            [*common, "--tokenizer", tok, "--cond", first, "--out", str(tmp_path / out / "1")]
        )
        b = train_generator.main(
            [*common, "--tokenizer", str(a), "--cond", second, "--out", str(tmp_path / out / "2")]
        )
        return RepTok.from_pretrained(b)

    class_first, text_first = train("class", "text", "ct"), train("text", "class", "tc")
    assert_same_state(class_first.class_generator.state_dict(), text_first.class_generator.state_dict())
    assert_same_state(class_first.text_generator.state_dict(), text_first.text_generator.state_dict())


def test_clear_errors(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        train_tokenizer.main(stage_a_args(tmp_path / "no-such-dir", tmp_path / "x"))
    with pytest.raises(ValueError, match="timm does not know"):
        train_tokenizer.main(stage_a_args(data_dir, tmp_path / "x", "--backbone", "vit_no_such_model"))
    with pytest.raises(FileNotFoundError, match="backbone folder"):
        train_tokenizer.main(stage_a_args(data_dir, tmp_path / "x", "--backbone", str(tmp_path / "none/")))
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        train_generator.main(["--preset", "test", "--tokenizer", str(tmp_path), "--out", str(tmp_path / "g")])

    out = tmp_path / "run"
    train_tokenizer.main(stage_a_args(data_dir, out, "--steps", "2"))
    with pytest.raises(FileExistsError, match="--resume"):
        train_tokenizer.main(stage_a_args(data_dir, out, "--steps", "2"))
    twin = dataclasses.replace(train_tokenizer.PRESETS["test"])  # same content, another name: still refused
    monkeypatch.setitem(train_tokenizer.PRESETS, "test-b", twin)
    other = ["--preset", "test-b", "--data", str(data_dir), "--out", str(out), "--resume", "--steps", "4"]
    expected = r"another preset or config:\n  preset: checkpoint 'test', now 'test-b'"
    with pytest.raises(ValueError, match=expected):
        train_tokenizer.main(other)
    with pytest.raises(ValueError, match=r"encoder\.cosine_weight"):
        train_tokenizer.main(stage_a_args(data_dir, out, "--resume", "--steps", "4", "--lam", "0.1"))


def test_batches_are_a_pure_function_of_seed_and_step() -> None:
    data = {"i": torch.arange(10)}
    stream = resumable_batches(data, 4, seed=1, start_step=0)
    full = [next(stream)["i"] for _ in range(6)]
    later = resumable_batches(data, 4, seed=1, start_step=3)
    assert all(torch.equal(next(later)["i"], full[k]) for k in (3, 4, 5))
    epoch0 = torch.cat(full)[:10]
    assert sorted(epoch0.tolist()) == list(range(10))  # each epoch is a permutation
    ranks = [
        next(resumable_batches(data, 2, seed=1, start_step=0, rank=r, world_size=2))["i"] for r in (0, 1)
    ]
    assert torch.equal(torch.cat(ranks), full[0])  # ranks split the global batch
    a, b = step_generator(0, 5), step_generator(0, 5)
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))


@pytest.mark.parametrize("script", ["train_tokenizer.py", "train_generator.py", "train_vae.py"])
def test_help(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "train" / script), "--preset", "test", "--help"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--preset" in result.stdout and "--resume" in result.stdout and "--steps" in result.stdout


def test_clip_groups_clip_each_group_on_its_own(tmp_path: Path) -> None:
    model = torch.nn.ModuleDict({"big": torch.nn.Linear(4, 4), "small": torch.nn.Linear(4, 4)})
    big, small = list(model["big"].parameters()), list(model["small"].parameters())
    cfg = TrainConfig(steps=1, batch_size=2, lr=1e-3, grad_clip=1.0, ema_decay=0.0)
    with pytest.raises(ValueError, match="partition"):
        Trainer(cfg, tmp_path / "bad", model, big + small, {}, clip_groups=[big])
    trainer = Trainer(cfg, tmp_path / "ok", model, big + small, {}, clip_groups=[big, small])
    grads: dict[str, float] = {}

    def loss_fn(m: torch.nn.Module, batch: dict, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        x = batch["x"]
        loss = 1e4 * m["big"](x).sum() + 1e-3 * m["small"](x).sum()  # gradients 10^7 apart
        return loss, {}

    def spy(*_: object) -> None:  # after clipping, before the optimizer step
        grads["big"] = float(torch.stack([p.grad.norm() for p in big]).norm())
        grads["small"] = float(torch.stack([p.grad.norm() for p in small]).norm())

    trainer.optimizer.register_step_pre_hook(lambda *a: spy())
    trainer.fit(iter([{"x": torch.ones(2, 4)}]), loss_fn)
    assert grads["big"] == pytest.approx(1.0, rel=1e-4)  # clipped to grad_clip
    assert 0 < grads["small"] < 1e-2  # untouched: a global clip would have scaled it by ~1e-7


@pytest.mark.parametrize(("warmup", "decay"), [(0, 0), (2, 0), (0, 3), (2, 3)])
def test_lr_schedule_is_warmup_stable_decay(warmup: int, decay: int) -> None:
    cfg = TrainConfig(steps=8, batch_size=1, lr=1.0, warmup_steps=warmup, decay_steps=decay)
    lrs = [cfg.lr_multiplier(s) for s in range(cfg.steps)]
    assert lrs[: warmup or 1] == pytest.approx(
        [(s + 1) / warmup if warmup else 1.0 for s in range(warmup or 1)]
    )
    assert lrs[warmup : cfg.steps - decay] == [1.0] * (cfg.steps - decay - warmup)  # the stable phase
    assert lrs[cfg.steps - decay :] == pytest.approx([(decay - k) / decay for k in range(decay)])  # to 0


def test_a_stable_run_cooled_down_on_resume_is_the_decay_run(data_dir: Path, tmp_path: Path) -> None:
    base = ["--lam", "0.5", "--ckpt-every", "1", "--warmup-steps", "1"]
    train_tokenizer.main(
        stage_a_args(data_dir, tmp_path / "wsd", *base, "--steps", "6", "--decay-steps", "3")
    )
    train_tokenizer.main(stage_a_args(data_dir, tmp_path / "split", *base, "--steps", "3"))
    train_tokenizer.main(
        stage_a_args(data_dir, tmp_path / "split", *base, "--steps", "6", "--decay-steps", "3", "--resume")
    )
    _assert_same_checkpoint(tmp_path / "wsd", tmp_path / "split", step=6)
    lrs = [json.loads(line).get("lr") for line in (tmp_path / "wsd" / "log.jsonl").read_text().splitlines()]
    assert [lr for lr in lrs if lr is not None][-1] < 1e-9  # the last step's LR (logged after it) is 0


def test_resume_config_check_allows_fields_added_since_but_not_changes() -> None:
    saved = {"lr": 1e-3, "encoder": {"depth": 2, "gone": 1}}
    current = {"lr": 1e-3, "encoder": {"depth": 3, "resize": "antialias"}}  # "resize": a new field
    assert config_differences(saved, current) == [
        "encoder.depth: checkpoint 2, now 3",
        "encoder.gone: checkpoint 1, now '(absent)'",
    ]
    assert config_differences(saved, saved | {"new": True}) == []


def test_stage_a_init_continues_a_saved_models_token_and_decoder(
    tokenizer_run: Path, data_dir: Path, tmp_path: Path
) -> None:
    """--init <RepTok folder>: stage A starts from its adapted [cls] embedding and decoder (0 more
    steps give the same weights back), on its backbone, with its original token as the anchor."""
    source = RepTok.from_pretrained(tokenizer_run / "model")
    init = ["--init", str(tokenizer_run / "model"), "--lam", "0.5"]
    same = RepTok.from_pretrained(
        train_tokenizer.main(stage_a_args(data_dir, tmp_path / "same", *init, "--steps", "0"))
    )
    assert torch.equal(same.encoder.backbone.cls_token, source.encoder.backbone.cls_token)
    assert torch.equal(same.encoder.frozen_cls_token, source.encoder.frozen_cls_token)
    for key, value in source.decoder.state_dict().items():
        assert torch.equal(same.decoder.state_dict()[key], value), key
    assert same.config.info["init"] == str(tokenizer_run / "model")
    more = RepTok.from_pretrained(
        train_tokenizer.main(stage_a_args(data_dir, tmp_path / "more", *init, "--steps", "2"))
    )
    assert not torch.equal(more.encoder.backbone.cls_token, source.encoder.backbone.cls_token)
    # A token map added on --init starts closed: the continued decoder starts as the saved one.
    mapped = RepTok.from_pretrained(
        train_tokenizer.main(
            stage_a_args(data_dir, tmp_path / "map", *init, "--token-map-channels", "2", "--steps", "0")
        )
    )
    assert mapped.decoder.config.token_map_channels == 2
    cfg = source.decoder.config
    x, t = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size), torch.rand(2)
    z = torch.randn(2, 1, cfg.token_dim)
    with torch.no_grad():
        torch.testing.assert_close(mapped.decoder(x, t, z), source.decoder(x, t, z))


def _write_and_read(kind: str) -> tuple[Callable[[Path], object], Callable[[Path], object]]:
    """How the training scripts write each kind of file (np.save and np.savez append their suffix to
    a name without it), and how it reads back."""
    import numpy as np

    return {
        ".npy": (lambda p: np.save(p, np.arange(3)), lambda p: np.load(p).tolist()),
        ".npz": (lambda p: np.savez(p, a=np.arange(3)), lambda p: np.load(p)["a"].tolist()),
        ".json": (lambda p: p.write_text("[0, 1, 2]"), lambda p: json.loads(p.read_text())),
        ".pt": (lambda p: torch.save([0, 1, 2], p), lambda p: torch.load(p, weights_only=True)),
    }[kind]


@pytest.mark.parametrize("name", ["bank.npy", "captions.npz", "config.json", "checkpoint.pt"])
def test_atomic_path_writes_whole_files_or_none(tmp_path: Path, name: str) -> None:
    from train.files import atomic_path

    write, read = _write_and_read(Path(name).suffix)
    target = tmp_path / name
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]  # no temp left
    with atomic_path(target) as tmp:
        write(tmp)
    assert sorted(tmp_path.iterdir()) == [target] and read(target) == [0, 1, 2]
