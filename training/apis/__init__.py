"""The training app's REST API, a package by concern: ``versions`` (training data, jobs, model
versions, deploy, rollback, history), ``abtests`` (A/B tests of a version against the active
one) and ``continuous`` (continuous learning settings)."""

from training.apis.abtests import ABTestApi, ABTestPromoteApi, ABTestStopApi, ab_test_payload
from training.apis.continuous import ContinuousLearningApi, continuous_payload
from training.apis.versions import (
    ModelDeployApi,
    ModelRollbackApi,
    ModelVersionListApi,
    TrainingJobCancelApi,
    TrainingJobListApi,
    TrainingPairsUploadApi,
    TrainingStartApi,
    TrainingStatusApi,
    job_payload,
    model_history,
    version_payload,
)

__all__ = [
    "ABTestApi",
    "ABTestPromoteApi",
    "ABTestStopApi",
    "ContinuousLearningApi",
    "ModelDeployApi",
    "ModelRollbackApi",
    "ModelVersionListApi",
    "TrainingJobCancelApi",
    "TrainingJobListApi",
    "TrainingPairsUploadApi",
    "TrainingStartApi",
    "TrainingStatusApi",
    "ab_test_payload",
    "continuous_payload",
    "model_history",
    "job_payload",
    "version_payload",
]
