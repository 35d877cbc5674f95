"""The web app's side of the system: fine-tuning runs for visitors, beside app.py and outside the core.

    store      RunInfo and the runs folder (run.json files), models per owner, progress read from a run's files
    uploads    uploaded training data, extracted safely and checked with t2i_core's `load_pairs`
    jobs       the one training process (`python -m t2i_core train --config RUN_DIR/train_config.json`)
    retention  what may be deleted, and when
    manager    RunManager: the four together, the only object app.py holds
    pipelines  PipelineCache: the last few loaded models
    limits     prompt length, request rates and training minutes per client; owner ids the server signs

Nothing here imports gradio, so every rule is unit-testable. `RunManager.from_env()` writes nothing until `open()`
(app.py calls it at launch).
"""

from .manager import RunManager
from .pipelines import PipelineCache
from .store import (DEFAULT_MODEL_KEY, FAILED, FINISHED, INTERRUPTED, PLOTTED_LOSSES, RUNNING, SCRATCH_KEY, STATUSES,
                    STOPPED, Progress, RunInfo, check_owner, read_metrics)
from .jobs import BusyError
from .uploads import Upload

__all__ = ["RunManager", "PipelineCache", "BusyError", "Progress", "RunInfo", "Upload", "check_owner", "read_metrics",
           "DEFAULT_MODEL_KEY", "SCRATCH_KEY", "PLOTTED_LOSSES", "STATUSES", "RUNNING", "FINISHED", "STOPPED", "FAILED",
           "INTERRUPTED"]
