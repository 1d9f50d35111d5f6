"""RepTok models on the Hugging Face Hub: `from_pretrained("user/name")` and `push_to_hub`, as in
diffusers and timm, through `huggingface_hub` (its cache, revisions, tokens, offline mode).

How a repo holds models:

- **One model per repo** (what `push_to_hub` writes): the repo root is one model folder, with its
  own backbone.safetensors and vae/, no `../` reference. `RepTok.from_pretrained("user/name")`.
- **Several model folders in one repo**, e.g. a mirror of `assets/models/`, where
  `clip-lam1/config.json` names "../reptok-emoji/backbone.safetensors":
  `RepTok.from_pretrained("user/models", subfolder="clip-lam1")`, as diffusers' `subfolder=`.
  The snapshot mirrors the repo's tree, so a relative reference resolves there as it does on disk;
  only the model's own files and the siblings its config references are downloaded. A reference
  that leaves the repo (or an absolute path) is refused with a message.

A local folder wins when it exists; a string that is not one and reads as a repo id goes to the
Hub. `HF_HUB_OFFLINE=1` (read at each call, not only at import) or `local_files_only=True` uses
the local Hub cache (`cache_dir`, default `HF_HUB_CACHE`) and never the network.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from reptok import storage
from reptok.model_config import RepTokConfig

if TYPE_CHECKING:
    from reptok.pipeline import RepTok

LIBRARY_NAME = "reptok"
OPTIONAL_FILES = ("metrics.json", "README.md")  # downloaded and pushed along when a model has them


def is_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, also when it was set after the import."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def looks_like_repo_id(name: str) -> bool:
    """True for "user/name" or "name": valid for the Hub and not written as a path ("./x", "/x", "~/x")."""
    if not name or name.startswith((".", "/", "~")) or "\\" in name or Path(name).is_absolute():
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def model_files(config: RepTokConfig, folder: str = "") -> tuple[list[str], list[str]]:
    """(files, folders) a model needs, as repo paths: the model's own files under `folder`, and
    the backbone file and VAE folder its config references (normalised, "../" resolved).

    The file names are those `reptok.storage` writes and reads."""
    prefix = f"{folder}/" if folder else ""

    def in_repo(reference: str, what: str) -> str:
        path = posixpath.normpath(prefix + Path(reference).as_posix())
        if posixpath.isabs(reference) or path == ".." or path.startswith("../"):
            where = f"subfolder {folder!r}" if folder else "the repo root"
            raise ValueError(
                f"config.json in {where} names {what} {reference!r}, which lies outside the repo; "
                "a Hub model must be self-contained (RepTok.push_to_hub writes it so)"
            )
        return path

    files = [prefix + "config.json", in_repo(config.backbone_file, "backbone_file")]
    files.append(prefix + "tokenizer.safetensors")
    for name in ("class_generator", "text_generator"):
        if getattr(config, name) is not None:
            files.append(f"{prefix}{name}.safetensors")
    folders = []
    vae = config.image_space.vae
    # A stored VAE is a folder ("vae", "../reptok-emoji/vae"; vae_sha256 is set for it, except in
    # folders saved before it existed, where a name without "/" is one too); a hub name
    # ("owner/name") is not in this repo: diffusers loads it.
    stored = vae is not None and (
        config.vae_sha256 is not None or vae.startswith((".", "/")) or "/" not in vae
    )
    if config.image_space.kind == "vae" and stored:
        folders.append(in_repo(vae, "image_space.vae"))
    return files, folders


def _snapshot(repo_id: str, patterns: list[str], **kwargs: Any) -> Path:
    """huggingface_hub.snapshot_download of `patterns`, with clear errors for a repo that is not there."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    offline = kwargs["local_files_only"]
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns, **kwargs))
    except LocalEntryNotFoundError as err:
        cache = kwargs.get("cache_dir") or huggingface_hub.constants.HF_HUB_CACHE
        why = f"the Hub could not be reached ({str(err).splitlines()[0]})"
        if offline:
            why = "offline mode (HF_HUB_OFFLINE=1 or local_files_only=True) forbids downloading it"
        raise FileNotFoundError(
            f"no RepTok model {repo_id!r} (revision {kwargs.get('revision') or 'main'}): it is not a local "
            f"folder, it is not in the Hub cache {cache}, and {why}"
        ) from err
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise FileNotFoundError(
            f"no RepTok model {repo_id!r}: not a local folder, and the Hub says: {str(err).splitlines()[0]} "
            "(a private repo needs token=, or `hf auth login`)"
        ) from err


def download_model(
    repo_id: str,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """The model folder of a Hub repo, downloaded into (or found in) the Hub cache: the config
    first, then exactly the files it needs. Returns `<snapshot>/<subfolder>`."""
    from reptok import __version__

    folder = posixpath.normpath(subfolder.strip("/")) if subfolder else ""
    if folder == "." or folder.startswith(".."):
        raise ValueError(f"subfolder {subfolder!r} is not a folder inside the repo")
    kwargs: dict[str, Any] = {
        "revision": revision, "cache_dir": cache_dir, "token": token,
        "local_files_only": local_files_only or is_offline(),
        "library_name": LIBRARY_NAME, "library_version": __version__,
    }  # fmt: skip
    prefix = f"{folder}/" if folder else ""
    snapshot = _snapshot(repo_id, [prefix + "config.json"], **kwargs)
    root = snapshot / folder if folder else snapshot
    if not (root / "config.json").is_file():
        where = f"subfolder {folder!r}" if folder else "its root"
        cached = sorted(p.parent.name for p in snapshot.glob("*/config.json") if p.parent.name != "vae")
        hint = "" if folder else "; a repo of several model folders needs subfolder="
        hint += f" (in the cache: {', '.join(cached)})" if cached and not folder else ""
        raise FileNotFoundError(f"{repo_id!r} holds no RepTok model in {where}: config.json is missing{hint}")
    files, folders = model_files(storage.read_config(root), folder)
    # The snapshot folder is named by its commit: the second call reads the same commit, even if
    # the branch moved in between.
    kwargs["revision"] = snapshot.name
    patterns = files + [prefix + name for name in OPTIONAL_FILES] + [f"{f}/*" for f in folders]
    _snapshot(repo_id, patterns, **kwargs)
    missing = [f for f in files if not (snapshot / f).is_file()]
    missing += [f"{f}/config.json" for f in folders if not (snapshot / f / "config.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"the snapshot of {repo_id!r} (commit {snapshot.name}) in the Hub cache lacks {', '.join(missing)}"
            + (" (offline: download it once with the network on)" if kwargs["local_files_only"] else "")
        )
    return root


def resolve(path: str | os.PathLike, *, subfolder: str | None = None, **hub_kwargs: Any) -> Path:
    """A model folder on disk for `path`: a local folder (+ subfolder) when it exists, otherwise the
    downloaded folder of the Hub repo `path` names. Anything else stays a local path (whose load
    then says that config.json is missing)."""
    local = Path(path) / subfolder if subfolder else Path(path)
    if Path(path).is_dir() or not isinstance(path, str) or not looks_like_repo_id(path):
        return local
    return download_model(path, subfolder=subfolder, **hub_kwargs)


MODEL_CARD = """---
library_name: reptok
tags:
- reptok
- image-tokenizer
- one-token
---

# {name}

A [RepTok](https://arxiv.org/abs/2510.14630) model: every image becomes one continuous token.

```python
from reptok import RepTok

model = RepTok.from_pretrained("{repo_id}"{subfolder})
reconstruction = model.reconstruct(image)[0]  # image: a PIL image
```
"""


def push_to_hub(
    model: RepTok,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload RepTok model",
    subfolder: str | None = None,
    dtype: torch.dtype = torch.float16,
    create_pr: bool = False,
) -> Any:
    """Upload a self-contained copy of `model` (its own backbone and VAE, no "../" reference) to
    the Hub repo `repo_id` (created if missing, `private` then applies), at its root or in
    `subfolder`, on branch `revision` (created if missing). Returns huggingface_hub's CommitInfo.

    The copy is written to a temporary folder with `save_pretrained(dtype=dtype)`; the model's
    metrics.json and README.md come along when its source folder has them, else a short model card."""
    import huggingface_hub

    huggingface_hub.create_repo(repo_id, private=private, token=token, exist_ok=True)
    if revision is not None and revision != "main":
        huggingface_hub.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reptok-push-") as tmp:
        folder = model.save_pretrained(Path(tmp) / "model", dtype=dtype)  # no references: self-contained
        for name in OPTIONAL_FILES:
            if model.source is not None and (model.source / name).is_file():
                shutil.copyfile(model.source / name, folder / name)
        if not (folder / "README.md").exists():
            name = model.config.info.get("name") or repo_id.split("/")[-1]
            where = f", subfolder={subfolder!r}" if subfolder else ""
            (folder / "README.md").write_text(MODEL_CARD.format(name=name, repo_id=repo_id, subfolder=where))
        return huggingface_hub.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            path_in_repo=subfolder,
            commit_message=commit_message,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )
