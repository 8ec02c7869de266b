from django.contrib import admin, messages

from tenants.scoping import tenant_context
from training.models import ABTest, ModelVersion, TrainingJob, TrainingPair
from training.services import ab_test_stop, model_rollback, model_version_deploy, training_job_cancel


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
    list_display = ("id", "tenant", "chatbot", "number", "kind", "status", "gate_passed", "gain", "size_bytes",
                    "created_at", "deployed_at")  # fmt: skip
    list_filter = ("status",)
    list_select_related = ("tenant", "chatbot", "space")
    readonly_fields = [f.name for f in ModelVersion._meta.fields]
    actions = ["deploy", "rollback"]

    @admin.display(boolean=True, description="Gate")
    def gate_passed(self, version):
        return bool(version.gate.get("passed"))

    @admin.display(description="Kind")
    def kind(self, version):
        return version.kind.replace("_", " ")

    @admin.display(description="nDCG@10 gain")
    def gain(self, version):
        gain = version.gate.get("gain")
        return "–" if gain is None else f"{gain:+.4f}"

    @admin.action(description="Deploy the selected versions (that passed the gate)")
    def deploy(self, request, queryset):
        for version in queryset:
            with tenant_context(version.tenant_id):
                try:
                    model_version_deploy(tenant=version.tenant, version=version)
                except Exception as exc:
                    self.message_user(request, f"Version {version.number}: {exc}", messages.WARNING)

    @admin.action(description="Roll back the chatbots of the selected versions to their previous version")
    def rollback(self, request, queryset):
        for chatbot in {version.chatbot for version in queryset}:
            with tenant_context(chatbot.tenant_id):
                try:
                    result = model_rollback(tenant=chatbot.tenant, chatbot=chatbot, user=request.user)
                    self.message_user(request, f"{chatbot.name}: {result['space']} serves again.")
                except Exception as exc:
                    self.message_user(request, f"{chatbot.name}: {exc}", messages.WARNING)


@admin.register(TrainingPair)
class TrainingPairAdmin(admin.ModelAdmin):
    list_display = ("id", "tenant", "chatbot", "source", "split", "query")
    list_filter = ("source", "split")
    search_fields = ("query",)


@admin.register(ABTest)
class ABTestAdmin(admin.ModelAdmin):
    list_display = ("id", "tenant", "chatbot", "variant", "traffic_percent", "status", "started_at", "ended_at",
                    "reason")  # fmt: skip
    list_filter = ("status",)
    list_select_related = ("tenant", "chatbot", "variant")
    readonly_fields = [f.name for f in ABTest._meta.fields]
    actions = ["stop"]

    @admin.action(description="Stop the selected running tests (the control keeps serving)")
    def stop(self, request, queryset):
        for test in queryset.filter(status__in=ABTest.LIVE):
            with tenant_context(test.tenant_id):
                try:
                    ab_test_stop(tenant=test.tenant, chatbot=test.chatbot, requested_by=str(request.user))
                except Exception as exc:
                    self.message_user(request, f"Test {test.pk}: {exc}", messages.WARNING)
