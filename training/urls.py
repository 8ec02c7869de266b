from django.urls import path

from training import apis

urlpatterns = [
    path("training/start", apis.TrainingStartApi.as_view(), name="api-training-start"),
    path("training/pairs", apis.TrainingPairsUploadApi.as_view(), name="api-training-pairs"),
    path("training/status/<int:job_id>", apis.TrainingStatusApi.as_view(), name="api-training-status"),
    path("training/jobs/<int:chatbot_id>", apis.TrainingJobListApi.as_view(), name="api-training-jobs"),
    path("training/jobs/<int:job_id>/cancel", apis.TrainingJobCancelApi.as_view(), name="api-training-cancel"),
    path("models/<int:chatbot_id>", apis.ModelVersionListApi.as_view(), name="api-models"),
    path("models/<int:version_id>/deploy", apis.ModelDeployApi.as_view(), name="api-models-deploy"),
    path("models/<int:chatbot_id>/rollback", apis.ModelRollbackApi.as_view(), name="api-models-rollback"),
    path("models/<int:chatbot_id>/ab-test", apis.ABTestApi.as_view(), name="api-models-ab-test"),
    path("models/<int:chatbot_id>/ab-test/promote", apis.ABTestPromoteApi.as_view(), name="api-ab-test-promote"),
    path("models/<int:chatbot_id>/ab-test/stop", apis.ABTestStopApi.as_view(), name="api-ab-test-stop"),
    path(
        "models/<int:chatbot_id>/continuous-learning",
        apis.ContinuousLearningApi.as_view(),
        name="api-models-continuous-learning",
    ),
]
