"""reptok.hub: RepTok.from_pretrained("user/name") and push_to_hub, offline.

The Hub cache is written here in huggingface_hub's own layout (models--user--name/blobs/<sha256>,
snapshots/<commit>/<path> as relative symlinks to the blobs, refs/<branch or tag> holding the
commit), HF_HUB_OFFLINE=1 is set, and huggingface_hub's snapshot_download reads it. push_to_hub
runs with huggingface_hub's create_repo / create_branch / upload_folder replaced: no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub.utils import filter_repo_objects

from reptok import hub
from reptok.__main__ import main
from reptok.decoder import ImageSpaceConfig
from reptok.pipeline import RepTok
from tests.helpers import TINY_VAE_CONFIG, randomize_, tiny_config

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def put_in_cache(
    cache: Path, repo_id: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",)
) -> None:
    """Every file under `folder` as one commit of `repo_id` in the Hub cache's layout."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


def repo_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE set after huggingface_hub was imported (as a Space's
    settings may be); every snapshot_download call is recorded."""
    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    calls: list[dict] = []
    real = huggingface_hub.snapshot_download

    def spy(repo_id: str, **kwargs):
        calls.append({"repo_id": repo_id, **kwargs})
        assert kwargs["local_files_only"], "offline: the network must not be asked"
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    return {"cache": cache, "calls": calls}


def outputs(model: RepTok) -> torch.Tensor:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return model.reconstruct(x, steps=2, seed=3, output_type="pt")


def vae_model(seed: int, share: RepTok | None = None) -> RepTok:
    """A tiny model in the tiny VAE's latent space: its own backbone and VAE, or those of `share`
    (another tokenizer on the same backbone and VAE, as the λ ablation's models are)."""
    cfg = tiny_config(with_text=False)
    cfg.decoder = cfg.decoder.replace(in_channels=4, input_size=16, patch_size=4)
    cfg.image_space = ImageSpaceConfig(kind="vae", vae_config=TINY_VAE_CONFIG)
    torch.manual_seed(seed)
    model = RepTok.from_config(cfg)
    randomize_(model.decoder, seed + 10)
    if share is not None:
        model.image_space.vae.load_state_dict(share.image_space.vae.state_dict())
        model.encoder.backbone.load_state_dict(share.encoder.backbone.state_dict())
    return model


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, RepTok]]:
    """A folder like assets/models: "base" stores its backbone and VAE; "child" references them
    ("../base/backbone.safetensors", "../base/vae"); "other" is an unrelated model."""
    root = tmp_path_factory.mktemp("mirror")
    base = vae_model(0)
    child, other = vae_model(1, share=base), vae_model(2)
    base.save_pretrained(root / "base", dtype=torch.float32)
    child.save_pretrained(
        root / "child",
        dtype=torch.float32,
        backbone_file="../base/backbone.safetensors",
        vae_folder="../base/vae",
    )
    (root / "child" / "metrics.json").write_text('{"psnr": 1.0}\n')
    other.save_pretrained(root / "other", dtype=torch.float32)
    return root, {"base": base, "child": child, "other": other}


def test_repo_id_loads_from_the_cache_offline(
    offline: dict, tiny_model: RepTok, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_in_cache(offline["cache"], "user/reptok-tiny", tiny_model_dir, COMMIT_A)
    loaded = RepTok.from_pretrained("user/reptok-tiny")  # HF_HUB_CACHE from the environment
    assert loaded.source == offline["cache"] / "models--user--reptok-tiny" / "snapshots" / COMMIT_A
    assert torch.equal(outputs(loaded), outputs(tiny_model))
    assert [c["revision"] for c in offline["calls"]] == [None, COMMIT_A]  # the 2nd call pins the commit
    assert offline["calls"][0]["allow_patterns"] == ["config.json"]
    # an explicit cache_dir, and local_files_only without the environment variable
    monkeypatch.delenv("HF_HUB_OFFLINE")
    other = offline["cache"].parent / "elsewhere"
    shutil.move(offline["cache"], other)
    loaded = RepTok.from_pretrained("user/reptok-tiny", cache_dir=other, local_files_only=True)
    assert torch.equal(outputs(loaded), outputs(tiny_model))


def test_cli_takes_a_repo_id(offline: dict, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    put_in_cache(offline["cache"], "user/reptok-tiny", tiny_model_dir, COMMIT_A)
    assert main(["info", "--model", "user/reptok-tiny"]) == 0
    assert f"snapshots/{COMMIT_A}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"no RepTok model 'user/missing'.*offline"):
        main(["info", "--model", "user/missing"])


def test_revision_picks_a_branch_tag_or_commit(
    offline: dict, tiny_model: RepTok, tiny_model_dir: Path, tmp_path: Path
) -> None:
    older = RepTok.from_pretrained(tiny_model_dir)
    randomize_(older.decoder, seed=9)  # the model as it was at the tag v1
    older.save_pretrained(tmp_path / "v1", dtype=torch.float32)
    put_in_cache(offline["cache"], "user/reptok-tiny", tmp_path / "v1", COMMIT_A, refs=("v1",))
    put_in_cache(offline["cache"], "user/reptok-tiny", tiny_model_dir, COMMIT_B, refs=("main",))
    new, old = outputs(tiny_model), outputs(older)
    assert not torch.equal(new, old)
    assert torch.equal(outputs(RepTok.from_pretrained("user/reptok-tiny")), new)
    assert torch.equal(outputs(RepTok.from_pretrained("user/reptok-tiny", revision="main")), new)
    assert torch.equal(outputs(RepTok.from_pretrained("user/reptok-tiny", revision="v1")), old)
    assert torch.equal(outputs(RepTok.from_pretrained("user/reptok-tiny", revision=COMMIT_A)), old)
    with pytest.raises(FileNotFoundError, match=r"'user/reptok-tiny' \(revision v2\).*offline"):
        RepTok.from_pretrained("user/reptok-tiny", revision="v2")


def test_subfolder_of_a_mirror_repo_brings_the_siblings_it_references(
    offline: dict, mirror: tuple[Path, dict[str, RepTok]], tmp_path: Path
) -> None:
    folder, models = mirror
    put_in_cache(offline["cache"], "user/reptok-models", folder, COMMIT_A)
    loaded = RepTok.from_pretrained("user/reptok-models", subfolder="child")
    assert loaded.source.name == "child" and loaded.source.parent.name == COMMIT_A
    want = outputs(models["child"])
    assert torch.equal(outputs(loaded), want)
    # What it asks the Hub for: the child's own files and the two siblings, nothing of "other",
    # nor the base's own tokenizer.
    asked = [c["allow_patterns"] for c in offline["calls"]]
    assert asked[0] == ["child/config.json"]
    fetched = set(filter_repo_objects(repo_files(folder), allow_patterns=asked[1]))
    assert fetched == {
        "child/config.json", "child/tokenizer.safetensors", "child/class_generator.safetensors",
        "child/metrics.json", "base/backbone.safetensors", "base/vae/config.json",
        "base/vae/diffusion_pytorch_model.safetensors",
    }  # fmt: skip
    # ... and that is enough: a cache holding only those files loads the same model.
    partial = tmp_path / "partial"
    for name in fetched:
        (partial / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / name, partial / name)
    put_in_cache(tmp_path / "cache2", "user/reptok-models", partial, COMMIT_A)
    again = RepTok.from_pretrained("user/reptok-models", subfolder="child", cache_dir=tmp_path / "cache2")
    assert torch.equal(outputs(again), want)
    # subfolder= on a local folder works the same
    assert torch.equal(outputs(RepTok.from_pretrained(folder, subfolder="child")), want)
    # A repo of several models has no model at its root: the error names the choices in the cache.
    with pytest.raises(
        FileNotFoundError,
        match=r"config.json is missing; .* needs subfolder= \(in the cache: base, child, other\)",
    ):
        RepTok.from_pretrained("user/reptok-models")


def test_clear_errors_offline(offline: dict, mirror: tuple[Path, dict[str, RepTok]], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"'user/missing'.*not in the Hub cache.*HF_HUB_OFFLINE=1"):
        RepTok.from_pretrained("user/missing")
    # a model whose references leave the repo: its root is "child", the base is not in the repo
    put_in_cache(offline["cache"], "user/child-only", mirror[0] / "child", COMMIT_A)
    with pytest.raises(ValueError, match=r"backbone_file '../base/backbone.safetensors', which lies outside"):
        RepTok.from_pretrained("user/child-only")
    # a cached snapshot that lacks a file the config needs
    half = tmp_path / "half"
    shutil.copytree(mirror[0] / "other", half)
    (half / "tokenizer.safetensors").unlink()
    put_in_cache(offline["cache"], "user/half", half, COMMIT_A)
    with pytest.raises(FileNotFoundError, match=r"lacks tokenizer\.safetensors"):
        RepTok.from_pretrained("user/half")
    # a path that is not a repo id stays a local path, with the local error
    with pytest.raises(FileNotFoundError, match="no RepTok model at"):
        RepTok.from_pretrained("./user/missing")
    assert offline["calls"][-1]["repo_id"] == "user/half"  # ... and asked nothing of the Hub


def test_a_local_folder_wins(
    offline: dict, tiny_model: RepTok, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "user" / "reptok-tiny")
    loaded = RepTok.from_pretrained("user/reptok-tiny")
    assert loaded.source == Path("user/reptok-tiny") and not offline["calls"]
    assert torch.equal(outputs(loaded), outputs(tiny_model))


def test_is_offline_and_repo_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert not hub.is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.is_offline()
    assert hub.looks_like_repo_id("user/reptok-emoji") and hub.looks_like_repo_id("reptok-emoji")
    for path in ("./user/name", "/abs/name", "~/name", "assets/models/reptok-emoji", "a\\b", ""):
        assert not hub.looks_like_repo_id(path), path


def test_model_files_of_a_config() -> None:
    cfg = tiny_config(with_text=False)
    cfg.image_space = ImageSpaceConfig(kind="vae", vae="stabilityai/sd-vae-ft-mse")  # diffusers loads it
    assert hub.model_files(cfg, "xl") == (
        [
            "xl/config.json",
            "xl/backbone.safetensors",
            "xl/tokenizer.safetensors",
            "xl/class_generator.safetensors",
        ],
        [],
    )
    cfg.image_space, cfg.vae_sha256 = ImageSpaceConfig(kind="vae", vae="../base/vae"), "0" * 64
    cfg.backbone_file = "../base/backbone.safetensors"
    assert hub.model_files(cfg, "a/b")[1] == ["a/base/vae"]
    with pytest.raises(ValueError, match="outside the repo"):
        hub.model_files(cfg, "")
    with pytest.raises(ValueError, match="not a folder inside the repo"):
        hub.download_model("user/name", subfolder="../x", local_files_only=True)


def test_push_to_hub_uploads_a_self_contained_copy(
    mirror: tuple[Path, dict[str, RepTok]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: dict[str, dict] = {}
    uploaded = tmp_path / "uploaded"

    def create_repo(repo_id: str, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, **kwargs}

    def create_branch(repo_id: str, **kwargs):
        calls["create_branch"] = {"repo_id": repo_id, **kwargs}

    def upload_folder(**kwargs):
        calls["upload_folder"] = kwargs
        shutil.copytree(
            kwargs["folder_path"], uploaded / (kwargs["path_in_repo"] or "")
        )  # it is deleted after
        return "commit-info"

    for name, fake in [
        ("create_repo", create_repo),
        ("create_branch", create_branch),
        ("upload_folder", upload_folder),
    ]:
        monkeypatch.setattr(huggingface_hub, name, fake)
    child = RepTok.from_pretrained(mirror[0] / "child")  # references ../base/backbone and ../base/vae
    result = child.push_to_hub(
        "user/reptok-child",
        private=True,
        token="hf_x",
        revision="dev",
        dtype=torch.float32,
        commit_message="v2",
    )
    assert result == "commit-info"
    assert calls["create_repo"] == {
        "repo_id": "user/reptok-child",
        "private": True,
        "token": "hf_x",
        "exist_ok": True,
    }
    assert calls["create_branch"] == {
        "repo_id": "user/reptok-child",
        "branch": "dev",
        "token": "hf_x",
        "exist_ok": True,
    }
    up = calls["upload_folder"]
    assert (up["repo_id"], up["revision"], up["commit_message"], up["token"]) == (
        "user/reptok-child",
        "dev",
        "v2",
        "hf_x",
    )
    assert not Path(up["folder_path"]).exists()  # the temporary copy is gone
    config = json.loads((uploaded / "config.json").read_text())
    assert config["backbone_file"] == "backbone.safetensors" and config["image_space"]["vae"] == "vae"
    assert "../" not in (uploaded / "config.json").read_text()
    assert {"backbone.safetensors", "vae/config.json", "metrics.json", "README.md"} <= set(
        repo_files(uploaded)
    )
    assert "library_name: reptok" in (uploaded / "README.md").read_text()
    # It loads alone (no sibling), locally and as a repo from the Hub cache, with the same outputs.
    want = outputs(mirror[1]["child"])
    assert torch.equal(outputs(RepTok.from_pretrained(uploaded)), want)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    put_in_cache(tmp_path / "cache", "user/reptok-child", uploaded, COMMIT_A, refs=("dev",))
    loaded = RepTok.from_pretrained("user/reptok-child", revision="dev", cache_dir=tmp_path / "cache")
    assert torch.equal(outputs(loaded), want)
    # into a subfolder of a repo, on main: no branch is created
    calls.clear()
    child.push_to_hub("user/models", subfolder="child")
    assert calls["upload_folder"]["path_in_repo"] == "child" and "create_branch" not in calls
    assert 'subfolder="child"' in (uploaded / "child" / "README.md").read_text().replace("'", '"')
