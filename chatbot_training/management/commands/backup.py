"""``manage.py backup PATH``: database dump, uploads, model versions and a manifest (chatbot_training/backup.py)."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.core.files.storage import storages
from django.core.management.base import BaseCommand, CommandError

from chatbot_training import backup
from tenants.errors import DomainError


class Command(BaseCommand):
    help = "Back up the database (pg_dump as the owner role), the uploads and the model artifacts into PATH."

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--owner-url", default=None, help="database to dump (default DATABASE_OWNER_URL)")

    def handle(self, *args, path, owner_url, **options):
        try:
            manifest = backup.backup(
                Path(path),
                owner_url=owner_url or settings.DATABASE_OWNER_URL,
                media_root=storages["default"],
                models_dir=storages["artifacts"],
            )
        except DomainError as error:
            raise CommandError(error.message) from error
        self.stdout.write(f"backup written to {path}")
        self.stdout.write(json.dumps({"row_counts": manifest["row_counts"], "file_count": manifest["file_count"]}))
