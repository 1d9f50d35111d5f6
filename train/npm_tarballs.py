"""npm packages as data sources: `npm pack` a pinned version into a cache, and extract only the files
wanted, safely. The emoji data set (`prepare_emoji.py`) reads its images this way; npm is one of the
few registries this project's machines reach.
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

__all__ = ["extract_package", "is_safe_member", "npm_pack", "tarball_stem"]


def tarball_stem(name: str, version: str) -> str:
    """How `npm pack` names the tarball: '@lobehub/fluent-emoji-flat' -> 'lobehub-fluent-emoji-flat-1.1.0'."""
    return f"{name.removeprefix('@').replace('/', '-')}-{version}"


def npm_pack(name: str, version: str, cache_dir: Path) -> Path:
    """`npm pack name@version` into the cache, unless the tarball is already there."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / f"{tarball_stem(name, version)}.tgz"
    if tarball.is_file():
        print(f"cached: {tarball}")
        return tarball
    print(f"npm pack {name}@{version} -> {cache_dir}")
    cmd = ["npm", "pack", f"{name}@{version}", "--pack-destination", str(cache_dir), "--silent"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    if not tarball.is_file():
        raise FileNotFoundError(f"npm pack did not produce {tarball}")
    return tarball


def is_safe_member(member: tarfile.TarInfo, wanted: tuple[str, ...]) -> bool:
    """Regular files under package/ only: no absolute paths, no '..', no links or devices."""
    parts = Path(member.name).parts
    return (
        member.isfile()
        and not Path(member.name).is_absolute()
        and ".." not in parts
        and len(parts) >= 2
        and parts[0] == "package"
        and member.name.startswith(wanted)
    )


def extract_package(tarball: Path, dest: Path, wanted: tuple[str, ...]) -> Path:
    """Extract the files we read (`wanted_files`) to dest/package; returns it."""
    root = dest / "package"
    done = dest / ".extracted"
    if done.is_file() and done.read_text() == tarball.name:
        return root
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            if not is_safe_member(member, wanted):
                continue
            # Written by hand rather than tar.extract: only the checked name, no modes or owners.
            target = dest.joinpath(*Path(member.name).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is not None:
                target.write_bytes(source.read())
    done.write_text(tarball.name)
    return root
