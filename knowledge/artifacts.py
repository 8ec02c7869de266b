"""Model artifacts — a fine-tuned version's folder of weights, or a query adapter — in the artifact
store every host shares.

The store is Django's storage ``storages["artifacts"]`` (``chatbot_training/settings.py``): by
default a ``FileSystemStorage`` on ``TRAINING_ARTIFACTS_DIR`` (one host, or a shared volume), with
``STORAGE_S3_BUCKET`` an S3 bucket under the prefix ``models/``. A process always loads an artifact
from a folder on its own disk, under ``TRAINING_ARTIFACTS_DIR``:

- on a filesystem store that folder *is* the stored artifact;
- on a remote store it is this host's copy, fetched on first use: every file into a temporary
  folder, checked against the artifact's manifest (sizes and SHA-256), then renamed into place, so
  a half-fetched artifact is never loaded and two processes fetching at once are harmless.

An artifact is published once, when its version is created (``artifact_publish``): the files, then
``MANIFEST.json`` last, so a reader that finds the manifest finds every file it names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, storages

MANIFEST = "MANIFEST.json"
_fetch_lock = threading.Lock()


class LocalArtifactStorage(FileSystemStorage):
    """The default store: the folder ``TRAINING_ARTIFACTS_DIR`` names now (tests move it)."""

    @property
    def base_location(self):
        return str(settings.TRAINING_ARTIFACTS_DIR)

    @property
    def location(self):
        return os.path.abspath(self.base_location)


class ArtifactMissing(Exception):
    """The store has no (complete) artifact under that name."""


def store():
    return storages["artifacts"]


def store_is_local() -> bool:
    """Whether the store is the local artifacts directory itself (nothing to copy)."""
    artifacts = store()
    return isinstance(artifacts, FileSystemStorage) and Path(artifacts.location).resolve() == local_root().resolve()


def local_root() -> Path:
    return Path(settings.TRAINING_ARTIFACTS_DIR)


def _check_name(relative: str) -> str:
    parts = Path(relative).parts
    if not relative or Path(relative).is_absolute() or ".." in parts:
        raise ValueError(f"Not an artifact name: {relative!r}.")
    return relative.strip("/")


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks (artifact manifests, backup manifests)."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def artifact_publish(relative: str, folder: Path) -> Path:
    """Store the artifact written to ``folder`` as ``relative``; returns this host's folder of it.
    ``folder`` is consumed (moved, or uploaded and then moved into this host's copy)."""
    relative = _check_name(relative)
    folder = Path(folder)
    files = _files(folder)
    entries = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files}
    manifest = {"files": entries}
    if not store_is_local():
        artifacts = store()
        for path in files:
            name = f"{relative}/{path.relative_to(folder).as_posix()}"
            if artifacts.exists(name):
                artifacts.delete(name)
            with open(path, "rb") as handle:
                artifacts.save(name, File(handle))
        manifest_name = f"{relative}/{MANIFEST}"
        if artifacts.exists(manifest_name):
            artifacts.delete(manifest_name)
        artifacts.save(manifest_name, ContentFile(json.dumps(manifest, sort_keys=True).encode()))
    (folder / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
    target = local_root() / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(folder), str(target))  # one rename when the folder is on the same disk
    return target


def artifact_local(relative: str) -> Path:
    """This host's folder of the artifact, fetched from the store first when it is not here yet.
    Raises ``ArtifactMissing`` when the store does not hold it."""
    relative = _check_name(relative)
    target = local_root() / relative
    if store_is_local() or (target / MANIFEST).is_file():
        return target
    with _fetch_lock:  # one fetch per process at a time; other processes race harmlessly
        if (target / MANIFEST).is_file():
            return target
        artifacts = store()
        try:
            with artifacts.open(f"{relative}/{MANIFEST}", "rb") as handle:
                manifest = json.loads(handle.read())
        except (FileNotFoundError, OSError, ValueError) as exc:
            raise ArtifactMissing(f"The artifact store has no complete artifact {relative}.") from exc
        except Exception as exc:  # botocore's ClientError for a missing key
            if type(exc).__name__ in ("ClientError", "NoSuchKey"):
                raise ArtifactMissing(f"The artifact store has no complete artifact {relative}.") from exc
            raise
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
        try:
            for name, expected in manifest["files"].items():
                if ".." in Path(name).parts or Path(name).is_absolute():
                    raise ArtifactMissing(f"The manifest of {relative} names {name!r}.")
                path = staging / name
                path.parent.mkdir(parents=True, exist_ok=True)
                with artifacts.open(f"{relative}/{name}", "rb") as source, open(path, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
                if path.stat().st_size != expected["bytes"] or file_sha256(path) != expected["sha256"]:
                    raise ArtifactMissing(f"{relative}/{name} in the artifact store does not match its manifest.")
            (staging / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
            try:
                os.rename(staging, target)
            except OSError:
                if not (target / MANIFEST).is_file():  # not another process's complete copy: ours wins
                    shutil.rmtree(target, ignore_errors=True)
                    os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def artifact_delete(relative: str) -> None:
    """Remove the artifact from the store and from this host (other hosts' copies are only caches
    of a version that no longer serves)."""
    relative = _check_name(relative)
    if not store_is_local():
        artifacts = store()
        for name in _store_walk(artifacts, relative):
            if not name.endswith("/" + MANIFEST):
                artifacts.delete(name)
        manifest = f"{relative}/{MANIFEST}"
        if artifacts.exists(manifest):
            artifacts.delete(manifest)
    shutil.rmtree(local_root() / relative, ignore_errors=True)


def _store_walk(artifacts, prefix: str):
    directories, files = artifacts.listdir(prefix)
    for name in files:
        yield f"{prefix}/{name}"
    for directory in directories:
        yield from _store_walk(artifacts, f"{prefix}/{directory}")
