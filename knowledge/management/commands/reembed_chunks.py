"""Give chunks stored before contexts existed their context, and re-embed every vector made
without one (in place: searches go on meanwhile). `make run` queues this at start and beat runs it;
the command does it now, in this process."""

import json

from django.core.management.base import BaseCommand

from knowledge.services import chunk_embeddings_refresh


class Command(BaseCommand):
    help = "Work out missing chunk contexts and re-embed vectors made without them (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--chatbot", type=int, help="Only this chatbot (its id).")

    def handle(self, *args, **options):
        self.stdout.write(json.dumps(chunk_embeddings_refresh(chatbot_id=options["chatbot"])))
