"""What a claimed training job does, by type, between collecting its pairs and its version:

- ``query_encoder_run`` (``query_encoder``, the default for a local model) and ``adapter_run``
  (``adapter``, the default for a hosted one) tune the query side over the stored document
  vectors (``frozen``): nothing is re-embedded to train, evaluate or deploy;
- ``fine_tune_run`` (``initial_training``, ``incremental``) trains both towers (``fine_tune``):
  for when a tenant's documents themselves need other vectors.

Each reports through ``Control`` (progress under the job's lease, cancel checks) and ends in
``model_version_create`` (``common`` holds what they share).
"""

from training.models import TrainingJob
from training.services.runs.common import Control, Outcome, evaluate
from training.services.runs.fine_tune import fine_tune_run
from training.services.runs.frozen import adapter_run, query_encoder_run

RUNS = {
    TrainingJob.Type.QUERY_ENCODER: query_encoder_run,
    TrainingJob.Type.ADAPTER: adapter_run,
    TrainingJob.Type.INITIAL: fine_tune_run,
    TrainingJob.Type.INCREMENTAL: fine_tune_run,
}

__all__ = ["RUNS", "Control", "Outcome", "adapter_run", "evaluate", "fine_tune_run", "query_encoder_run"]
