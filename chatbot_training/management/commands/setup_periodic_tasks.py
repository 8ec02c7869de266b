from django.core.management.base import BaseCommand
from django_celery_beat.models import IntervalSchedule, PeriodicTask

# Every periodic task of the project, in one place: name -> (task, every seconds, expires seconds)
SCHEDULE = {
    "Sweep stuck ingestion jobs": ("knowledge.ingestion_jobs_sweep", 60, 55),
    "Write queued search logs": ("search.logs_flush", 10, 9),
    "Optimise per-chatbot vector indexes": ("knowledge.vector_indexes_optimize", 900, 850),
    "Re-embed chunks stored without context": ("knowledge.chunk_embeddings_refresh", 3600, 3000),
    "Sweep stuck training jobs": ("training.training_jobs_sweep", 60, 55),
    "Remove retired model versions": ("training.model_versions_retire", 3600, 3000),
    "End A/B tests at max days, trip guardrails": ("training.ab_tests_check", 300, 240),
    "Continuous learning: start jobs on new training signal": ("training.continuous_learning", 900, 800),
    "Nightly retrieval evaluation of every chatbot": ("training.evaluations_nightly", 86400, 80000),
    "Evaluate alert rules, open and resolve alerts": ("monitoring.alerts_evaluate", 60, 55),
    "Optimise every chatbot's search (tune, reindex, vacuum, analyze)": ("search.optimize_nightly", 86400, 3600),
}


class Command(BaseCommand):
    help = "Create or update the django-celery-beat schedule (idempotent)."

    def handle(self, *args, **options):
        for name, (task, seconds, expires) in SCHEDULE.items():
            interval, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
            PeriodicTask.objects.update_or_create(
                name=name,
                defaults={"task": task, "interval": interval, "expire_seconds": expires, "enabled": True},
            )
        stale = PeriodicTask.objects.exclude(name__in=SCHEDULE).exclude(name__startswith="celery.")
        stale.update(enabled=False)
        self.stdout.write(f"{len(SCHEDULE)} periodic tasks scheduled.")
