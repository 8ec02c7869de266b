"""``manage.py restore PATH [--force]``: checks the manifest, then restores database and files."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.core.files.storage import storages
from django.core.management.base import BaseCommand, CommandError

from chatbot_training import backup
from knowledge.artifacts import store_is_local
from tenants.errors import DomainError


class Command(BaseCommand):
    help = "Restore a backup made by `manage.py backup` (refuses a damaged backup; a target with data unless --force)."

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--force", action="store_true", help="replace existing data and files")
        parser.add_argument("--owner-url", default=None, help="database to restore into (default DATABASE_OWNER_URL)")
        parser.add_argument("--app-url", default=None, help="app role URL of that database (default DATABASE_URL)")

    def handle(self, *args, path, force, owner_url, app_url, **options):
        try:
            result = backup.restore(
                Path(path),
                owner_url=owner_url or settings.DATABASE_OWNER_URL,
                app_url=app_url or (None if owner_url else settings.DATABASE_URL),
                media_root=storages["default"],
                models_dir=storages["artifacts"],
                force=force,
                local_copies=None if store_is_local() else Path(settings.TRAINING_ARTIFACTS_DIR),
            )
        except DomainError as error:
            raise CommandError(error.message) from error
        self.stdout.write(json.dumps({"restored": result["counts"], "manifest": result["manifest"]["row_counts"]}))
        if result["mismatches"]:
            raise CommandError(f"restored row counts differ from the manifest: {result['mismatches']}")
        self.stdout.write("restored row counts match the manifest")
