"""Loading models from several threads at once, as the app does when two requests each load a model:
diffusers builds a VAE with process-wide patches on (accelerate's init_empty_weights, torch.nn.init
switched off), so RepTok builds its models one at a time."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from reptok import storage
from reptok.decoder import ImageSpaceConfig
from reptok.pipeline import RepTok
from tests.helpers import TINY_VAE_CONFIG, randomize_, tiny_config


def _save(path: Path, vae: bool) -> Path:
    cfg = tiny_config(with_text=False)
    if vae:
        cfg.decoder = cfg.decoder.replace(in_channels=4, input_size=16, patch_size=4)
        cfg.image_space = ImageSpaceConfig(kind="vae", vae_config=TINY_VAE_CONFIG)
    model = RepTok.from_config(cfg)
    randomize_(model.decoder, seed=1)
    return model.save_pretrained(path, dtype=torch.float32)


def _state(model: RepTok) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{k}": v for name, part in model.components().items() for k, v in part.state_dict().items()
    }


def test_a_load_waits_while_another_thread_builds_a_vae(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thread A builds a VAE-space model and holds diffusers' patches for a while (up to 3 s, or until
    thread B is done); thread B loads a pixel-space model meanwhile. B must wait for A: built under
    A's patches its modules would get meta weights and its load would fail ("Cannot copy out of meta
    tensor"). Both models come back with the weights a load on its own gives."""
    from accelerate import init_empty_weights
    from diffusers.models.modeling_utils import no_init_weights

    paths = {"a": _save(tmp_path / "a", vae=True), "b": _save(tmp_path / "b", vae=False)}
    inside, b_done = threading.Event(), threading.Event()
    build_vae = storage.build_vae

    def slow_build_vae(config: ImageSpaceConfig, root: Path | None) -> torch.nn.Module | None:
        if config.kind == "vae":
            with no_init_weights(), init_empty_weights():  # what diffusers' from_pretrained holds
                inside.set()
                b_done.wait(timeout=3)  # without turns, B runs to its end in here
        return build_vae(config, root)

    monkeypatch.setattr(storage, "build_vae", slow_build_vae)
    loaded: dict[str, RepTok | BaseException] = {}

    def load(name: str) -> None:
        try:
            loaded[name] = RepTok.from_pretrained(paths[name])
        except BaseException as err:  # reported by the assertions below
            loaded[name] = err
        finally:
            if name == "b":
                b_done.set()

    a = threading.Thread(target=load, args=("a",))
    a.start()
    assert inside.wait(timeout=30)
    b = threading.Thread(target=load, args=("b",))
    b.start()
    a.join(timeout=60)
    b.join(timeout=60)
    monkeypatch.undo()
    for name, path in paths.items():
        model = loaded[name]
        assert isinstance(model, RepTok), f"{name}: {model!r}"
        alone, state = _state(RepTok.from_pretrained(path)), _state(model)
        assert not any(t.is_meta for t in state.values())
        assert state.keys() == alone.keys() and all(torch.equal(state[k], alone[k]) for k in state), name
