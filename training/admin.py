from django.contrib import admin, messages

from tenants.scoping import tenant_context
from training.models import ModelVersion, TrainingJob, TrainingPair
from training.services import model_version_deploy, training_job_cancel


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    list_display = ("id", "tenant", "chatbot", "job_type", "status", "stage", "progress", "attempts", "created_at",
                    "finished_at")  # fmt: skip
    list_filter = ("status", "job_type", "stage")
    readonly_fields = [f.name for f in TrainingJob._meta.fields]
    actions = ["cancel"]

    @admin.action(description="Cancel the selected queued or running jobs")
    def cancel(self, request, queryset):
        for job in queryset:
            with tenant_context(job.tenant_id):
                try:
                    training_job_cancel(tenant=job.tenant, job=job)
                except Exception as exc:
                    self.message_user(request, f"Job {job.pk}: {exc}", messages.WARNING)


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("id", "tenant", "chatbot", "number", "status", "gate_passed", "size_bytes", "created_at",
                    "deployed_at")  # fmt: skip
    list_filter = ("status",)
    readonly_fields = [f.name for f in ModelVersion._meta.fields]
    actions = ["deploy"]

    @admin.display(boolean=True, description="Gate")
    def gate_passed(self, version):
        return bool(version.gate.get("passed"))

    @admin.action(description="Deploy the selected versions (that passed the gate)")
    def deploy(self, request, queryset):
        for version in queryset:
            with tenant_context(version.tenant_id):
                try:
                    model_version_deploy(tenant=version.tenant, version=version)
                except Exception as exc:
                    self.message_user(request, f"Version {version.number}: {exc}", messages.WARNING)


@admin.register(TrainingPair)
class TrainingPairAdmin(admin.ModelAdmin):
    list_display = ("id", "tenant", "chatbot", "source", "split", "query")
    list_filter = ("source", "split")
    search_fields = ("query",)
