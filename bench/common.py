"""Helpers shared by the benchmarks: a dedicated database on the (embedded or configured) server."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatbot_training.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def use_database(name: str, *, fresh: bool) -> tuple[str, bool]:
    """Create ``name`` if missing (dropped first with ``fresh``), point Django at it, migrate.
    Returns its URL and whether it was created now. Call after ``django.setup()``."""
    import psycopg
    from django import db
    from django.conf import settings
    from django.core.management import call_command

    base = settings.DATABASE_URL
    admin = urlunsplit(urlsplit(base)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if fresh and exists:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
            exists = None
        if not exists:
            conn.execute(f"CREATE DATABASE {name}")
    url = urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    settings.DATABASES["default"]["NAME"] = name
    settings.SEARCH_CACHE_PREFIX = f"search:{name}:"
    db.connections.close_all()
    call_command("migrate", verbosity=0)
    return url, not exists
