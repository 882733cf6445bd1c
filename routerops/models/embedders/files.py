"""The on-disk layout shared by built embedders: a folder with a manifest.json naming the format,
the files and a sha256 over their bytes (the content hash that goes into the embedder's name)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class EmbedderFilesError(RuntimeError):
    """A built embedder folder is missing, incomplete or was changed after it was built."""


def content_hash(folder: Path, files: list[str], config: dict[str, Any]) -> str:
    """sha256 over the config (canonical JSON) and each file's bytes, in the listed order."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in files:
        h.update(name.encode())
        with open(folder / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, fmt: str, files: list[str], config: dict[str, Any],
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    manifest = {"format": fmt, "files": files, "config": config,
                "sha256": content_hash(folder, files, config), **(extra or {})}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def read_manifest(folder: Path | str, fmt: str, build_hint: str, verify: bool = True) -> dict[str, Any]:
    """The manifest of a built embedder; `verify` re-hashes the files (a few ms for the static table)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise EmbedderFilesError(f"no built embedder at {folder} ({MANIFEST} missing): build it with "
                                 f"`{build_hint}`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != fmt:
        raise EmbedderFilesError(f"{folder} holds a {manifest.get('format')!r} embedder, expected {fmt!r}")
    missing = [f for f in manifest["files"] if not (folder / f).is_file()]
    if missing:
        raise EmbedderFilesError(f"embedder folder {folder} is incomplete: missing {', '.join(missing)}")
    if verify:
        actual = content_hash(folder, manifest["files"], manifest["config"])
        if actual != manifest["sha256"]:
            raise EmbedderFilesError(f"embedder files in {folder} changed after the build "
                                     f"(sha256 {actual[:12]} != manifest {manifest['sha256'][:12]}): rebuild")
    return manifest


def manifest_sha(folder: Path | str) -> str | None:
    """The recorded content hash, without re-hashing (None when there is no manifest)."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()).get("sha256") if path.is_file() else None
