from django.urls import path

from knowledge import apis

urlpatterns = [
    path("upload-training-data", apis.UploadTrainingDataApi.as_view(), name="api-upload"),
    path("training-data/<int:chatbot_id>", apis.TrainingDataListApi.as_view(), name="api-training-data"),
    path("documents/<int:document_id>", apis.DocumentDetailApi.as_view(), name="api-document"),
    path("documents/<int:document_id>/status", apis.DocumentStatusApi.as_view(), name="api-document-status"),
    path("documents/<int:document_id>/reprocess", apis.DocumentReprocessApi.as_view(), name="api-document-reprocess"),
]
