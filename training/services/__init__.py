"""Every write of the training app, a package by concern:

- ``data``: training pairs from every source, uploads, the held-out split;
- ``jobs``: the training job's state machine (start, run, cancel, sweep) and its evaluation;
- ``trainer``: sentence-transformers fine-tuning, hard-negative mining, ranking metrics;
- ``versions``: model versions, the gate, deploy, rollback, retention;
- ``abtests``: A/B tests of a version against the active one, their statistics and guardrails;
- ``continuous``: continuous learning (a beat task starts jobs on new signal, the gate decides);
- ``evaluation``: the nightly retrieval evaluation of the serving version (a time series).
"""

from training.services.abtests import (
    ab_test_prepare_run,
    ab_test_promote,
    ab_test_report,
    ab_test_start,
    ab_test_stop,
    ab_tests_check,
)
from training.services.continuous import (
    continuous_learning_get,
    continuous_learning_run,
    continuous_learning_update,
)
from training.services.data import (
    training_data_summary,
    training_pairs_collect,
    training_pairs_from_gap,
    training_pairs_upload,
)
from training.services.evaluation import evaluation_run, evaluations_nightly
from training.services.jobs import (
    training_config_parse,
    training_job_cancel,
    training_job_run,
    training_job_start,
    training_job_tenant_id,
    training_jobs_sweep,
)
from training.services.versions import (
    gate_verdict,
    model_rollback,
    model_version_deploy,
    model_version_deploy_run,
    model_versions_retire,
)

__all__ = [
    "evaluation_run",
    "evaluations_nightly",
    "ab_test_prepare_run",
    "ab_test_promote",
    "ab_test_report",
    "ab_test_start",
    "ab_test_stop",
    "ab_tests_check",
    "continuous_learning_get",
    "continuous_learning_run",
    "continuous_learning_update",
    "gate_verdict",
    "model_rollback",
    "model_version_deploy",
    "model_version_deploy_run",
    "model_versions_retire",
    "training_config_parse",
    "training_data_summary",
    "training_job_cancel",
    "training_job_run",
    "training_job_start",
    "training_job_tenant_id",
    "training_jobs_sweep",
    "training_pairs_collect",
    "training_pairs_from_gap",
    "training_pairs_upload",
]
