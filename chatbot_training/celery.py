import os

from celery import Celery, Task

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatbot_training.settings")


class ScopedTask(Task):
    """Every task starts with no tenant scope, whoever called it (an eager call from a request
    included): a task that reads tenant rows must say whose (``tenant_context``) or why it may read
    every tenant's (``cross_tenant_context``), or row-level security shows it nothing."""

    def __call__(self, *args, **kwargs):
        from tenants.scoping import no_tenant_context

        with no_tenant_context():
            return super().__call__(*args, **kwargs)


app = Celery("chatbot_training", task_cls=ScopedTask)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
