"""Backup and restore: the database (``pg_dump --format=custom`` as the owner role), the uploads
(the ``default`` storage: ``MEDIA_ROOT`` or the S3 bucket's ``media/``) and the model versions
(the ``artifacts`` storage: ``TRAINING_ARTIFACTS_DIR`` or the bucket's ``models/``), with a
manifest of versions, row counts and a SHA-256 per file. Files are read and written through
Django's storage API, so a backup of a bucket restores onto a disk and the other way round.

Layout of a backup directory::

    database.dump        pg_dump custom format
    files/media/...      copy of the uploads
    files/models/...     copy of the model artifacts
    manifest.json

Row-level security policies and grants are part of the schema the owner created, so they come
back with the dump; restore checks afterwards that the app role reads its tenants' rows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from knowledge.artifacts import file_sha256
from tenants.errors import DomainError

COUNTED_TABLES = {
    "tenants": "tenants_tenant",
    "chatbots": "tenants_chatbot",
    "documents": "knowledge_document",
    "chunks": "knowledge_chunk",
    "chunk_embeddings": "knowledge_chunkembedding",
    "model_versions": "training_modelversion",
    "training_pairs": "training_trainingpair",
}


def _store(place):
    """A storage: given, or a folder on this disk."""
    from django.core.files.storage import FileSystemStorage

    return FileSystemStorage(location=str(place)) if isinstance(place, (str, Path)) else place


def _store_names(store, prefix: str = ""):
    """Every file name in ``store`` (recursively)."""
    try:
        directories, files = store.listdir(prefix)
    except FileNotFoundError:
        return
    for name in sorted(files):
        yield f"{prefix}/{name}" if prefix else name
    for directory in sorted(directories):
        yield from _store_names(store, f"{prefix}/{directory}" if prefix else directory)


def _store_download(store, destination: Path) -> None:
    for name in _store_names(store):
        path = destination / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with store.open(name, "rb") as source, open(path, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)


def _store_clear(store) -> None:
    for name in list(_store_names(store)):
        store.delete(name)
    location = getattr(store, "location", None)
    if location and os.path.isdir(location) and not getattr(store, "bucket_name", None):
        shutil.rmtree(location)  # empty folders too
        os.makedirs(location, exist_ok=True)


def _store_upload(store, source: Path) -> None:
    from django.core.files import File

    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        name = path.relative_to(source).as_posix()
        with open(path, "rb") as handle:
            saved = store.save(name, File(handle))
        if saved != name:  # documents name their files: a renamed copy would be an orphan
            raise _error("restore_file_renamed", f"the storage saved {name} as {saved}")


class BackupError(DomainError):
    pass


def _error(code: str, message: str) -> BackupError:
    return BackupError(message, code=code)


def pg_binary(name: str) -> str:
    """``pg_dump`` / ``pg_restore``: the embedded PostgreSQL's own install on the local stack (a
    PATH one may be an older major version, which pg_dump refuses), else from PATH."""
    from django.conf import settings

    found = shutil.which(name)
    if found and not getattr(settings, "EMBEDDED", False):
        return found
    try:
        import pgserver

        candidate = Path(pgserver.__file__).parent / "pginstall" / "bin" / name
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    if found:
        return found
    raise _error("pg_tool_missing", f"{name} not found on PATH nor in the embedded PostgreSQL install")


def _pg_env(url: str) -> tuple[list[str], dict]:
    """Connection arguments for the pg tools (password through the environment, not argv)."""
    parts = urlsplit(url)
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = parts.password
    host = parts.hostname or ""
    from urllib.parse import unquote

    args = ["--dbname", parts.path.lstrip("/") or "postgres"]
    if host:
        args += ["--host", unquote(host)]
    if parts.port:
        args += ["--port", str(parts.port)]
    if parts.username:
        args += ["--username", unquote(parts.username)]
    # the embedded server's socket host comes as a query parameter (?host=/path)
    from urllib.parse import parse_qs

    query = parse_qs(parts.query)
    if "host" in query:
        args += ["--host", query["host"][0]]
    return args, env


def row_counts(url: str) -> dict:
    with psycopg.connect(url) as conn:
        counts = {}
        for name, table in COUNTED_TABLES.items():
            exists = conn.execute("SELECT to_regclass(%s)", [f"public.{table}"]).fetchone()[0]
            counts[name] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] if exists else 0
        return counts


def _migration_state(conn) -> dict:
    if conn.execute("SELECT to_regclass('public.django_migrations')").fetchone()[0] is None:
        return {}
    rows = conn.execute("SELECT app, max(name) FROM django_migrations GROUP BY app ORDER BY app").fetchall()
    return dict(rows)


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _tool_version(binary: str) -> str:
    return subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def _file_entries(root: Path, prefix: str) -> list[dict]:
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        entries.append(
            {
                "path": f"{prefix}/{path.relative_to(root).as_posix()}",
                "bytes": path.stat().st_size,
                "sha256": file_sha256(path),
            }
        )
    return entries


def backup(target: Path, *, owner_url: str, media_root, models_dir) -> dict:
    """Write a backup into directory ``target`` (must not exist or be empty); return the manifest.
    ``media_root`` and ``models_dir``: a folder, or a Django storage."""
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise _error("backup_target_not_empty", f"{target} exists and is not empty")
    target.mkdir(parents=True, exist_ok=True)
    pg_dump = pg_binary("pg_dump")
    args, env = _pg_env(owner_url)
    dump = target / "database.dump"
    result = subprocess.run(
        [pg_dump, "--format=custom", "--file", str(dump), *args], env=env, capture_output=True, text=True
    )
    if result.returncode:
        raise _error("pg_dump_failed", f"pg_dump failed: {result.stderr.strip()}")
    with psycopg.connect(owner_url) as conn:
        server_version = conn.execute("SHOW server_version").fetchone()[0]
        migrations = _migration_state(conn)
    files = []
    for name, place in (("media", media_root), ("models", models_dir)):
        destination = target / "files" / name
        destination.mkdir(parents=True, exist_ok=True)
        _store_download(_store(place), destination)
        files += _file_entries(destination, f"files/{name}")
    from django.conf import settings

    manifest = {
        "format": 1,
        "created_at": datetime.now(UTC).isoformat(),
        "app_version": getattr(settings, "APP_VERSION", None),
        "git_commit": _git_commit(),
        "postgresql_server_version": server_version,
        "pg_dump_version": _tool_version(pg_dump),
        "migrations": migrations,
        "row_counts": row_counts(owner_url),
        "database_dump": {"path": "database.dump", "bytes": dump.stat().st_size, "sha256": file_sha256(dump)},
        "files": files,
        "file_count": len(files),
        "file_bytes": sum(entry["bytes"] for entry in files),
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def verify(source: Path) -> dict:
    """The manifest, after checking the dump's and every file's SHA-256 against it."""
    source = Path(source)
    manifest_path = source / "manifest.json"
    if not manifest_path.exists():
        raise _error("backup_manifest_missing", f"{manifest_path} not found: not a backup directory")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as error:
        raise _error("backup_manifest_invalid", f"manifest.json is not valid JSON: {error}") from error
    problems = []
    for entry in [manifest["database_dump"], *manifest.get("files", [])]:
        path = source / entry["path"]
        if not path.exists():
            problems.append(f"{entry['path']}: missing")
        elif file_sha256(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: SHA-256 does not match the manifest")
    if problems:
        raise _error("backup_checksum_mismatch", "backup is damaged, nothing restored: " + "; ".join(problems))
    return manifest


def _non_empty(place) -> bool:
    return next(iter(_store_names(_store(place))), None) is not None


def restore(
    source: Path,
    *,
    owner_url: str,
    app_url: str | None,
    media_root,
    models_dir,
    force: bool = False,
    cache_prefix: str | None = None,
    local_copies: Path | None = None,
) -> dict:
    """Restore a backup made by ``backup``; return ``{"manifest", "counts", "mismatches"}``.
    ``media_root`` and ``models_dir``: a folder, or a Django storage; ``local_copies``: this host's
    folder of fetched artifacts when the models live in a remote store (emptied: they may be stale)."""
    source = Path(source)
    manifest = verify(source)
    owner_role = urlsplit(owner_url).username
    if not force:
        if row_counts(owner_url)["tenants"]:
            raise _error("restore_target_has_data", "the target database has tenants; pass --force to replace them")
        for name, place in (("uploads", media_root), ("model artifacts", models_dir)):
            if _non_empty(place):
                raise _error("restore_target_has_files", f"the {name} storage is not empty; pass --force to replace it")
    pg_restore = pg_binary("pg_restore")
    args, env = _pg_env(owner_url)
    command = [pg_restore, "--clean", "--if-exists", "--no-owner", "--exit-on-error", *args]
    if owner_role:
        command.insert(1, f"--role={owner_role}")
    # Extensions (vector, pg_trgm) belong to a superuser, who creates them in every database
    # (tenants.dbroles.database_sql, template1 included): the owner restores everything else.
    listing = subprocess.run(
        [pg_restore, "--list", str(source / "database.dump")], capture_output=True, text=True, check=True
    ).stdout
    kept = [line for line in listing.splitlines() if " EXTENSION " not in line]
    use_list = source / ".restore.list"
    use_list.write_text("\n".join(kept) + "\n")
    try:
        result = subprocess.run(
            [*command, "--use-list", str(use_list), str(source / "database.dump")],
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        use_list.unlink(missing_ok=True)
    if result.returncode:
        raise _error("pg_restore_failed", f"pg_restore failed: {result.stderr.strip()}")
    for name, place in (("media", media_root), ("models", models_dir)):
        store = _store(place)
        _store_clear(store)
        copied = source / "files" / name
        if copied.exists():
            _store_upload(store, copied)
    if local_copies is not None and Path(local_copies).is_dir():
        shutil.rmtree(local_copies)
    _clear_search_cache(cache_prefix)
    counts = row_counts(owner_url)
    if app_url:
        _check_app_role(app_url, owner_url)
    mismatches = {
        name: {"manifest": manifest["row_counts"].get(name), "restored": value}
        for name, value in counts.items()
        if manifest["row_counts"].get(name) != value
    }
    return {"manifest": manifest, "counts": counts, "mismatches": mismatches}


def _check_app_role(app_url: str, owner_url: str) -> None:
    """The app role reads each tenant's documents under its scope (grants and policies back)."""
    with psycopg.connect(owner_url) as conn:
        rows = conn.execute("SELECT tenant_id, count(*) FROM knowledge_document GROUP BY tenant_id").fetchall()
        expected = dict(rows)
    with psycopg.connect(app_url) as conn:
        for tenant_id, count in expected.items():
            with conn.transaction():
                conn.execute("SELECT set_config('app.tenant_id', %s, true)", [str(tenant_id)])
                seen = conn.execute("SELECT count(*) FROM knowledge_document").fetchone()[0]
            if seen != count:
                raise _error(
                    "restore_app_role_blind",
                    f"the app role sees {seen} of tenant {tenant_id}'s {count} documents after restore",
                )


def _clear_search_cache(prefix: str | None) -> int:
    from django.conf import settings

    from tenants import redis_client

    prefix = prefix or settings.SEARCH_CACHE_PREFIX
    client = redis_client.client()
    if client is None:
        return 0
    removed = 0
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        removed += client.delete(key)
    return removed
