"""Every write of the training app, a package by concern:

- ``data``: training pairs from every source, uploads, the held-out split;
- ``jobs``: the training job's state machine (start, run, cancel, sweep) and its evaluation;
- ``trainer``: sentence-transformers fine-tuning, hard-negative mining, ranking metrics;
- ``versions``: model versions, the gate, deploy, rollback, retention.
"""

from training.services.data import (
    training_data_summary,
    training_pairs_collect,
    training_pairs_upload,
)
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
    "training_pairs_upload",
]
