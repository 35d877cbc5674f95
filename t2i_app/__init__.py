"""The web app's side of the system: fine-tuning runs for visitors, beside app.py and outside the core.

    store          RunInfo and the runs folder (run.json files), models per owner, progress read from a run's files
    uploads        uploaded training data, extracted safely and checked with t2i_core's `load_pairs`
    jobs           the one training process (`python -m t2i_core train --config RUN_DIR/train_config.json`)
    retention      what may be deleted, and when
    manager        RunManager: the four together, the only object app.py holds
    pipelines      PipelineCache: the last few loaded models
    model_process  the models in a process of their own, started before the page's imports (RemotePipelines)
    limits         prompt length, request rates and training minutes per client; owner ids the server signs

Nothing here imports gradio, so every rule is unit-testable. `RunManager.from_env()` writes nothing until `open()`
(app.py calls it at launch). The names below load on first use (PEP 562), so that `t2i_app.model_process` starts
before torch is imported.
"""

import importlib

_EXPORTS = {
    "RunManager": "manager", "PipelineCache": "pipelines", "BusyError": "jobs", "Upload": "uploads",
    **{name: "store" for name in ("DEFAULT_MODEL_KEY", "FAILED", "FINISHED", "INTERRUPTED", "PLOTTED_LOSSES",
                                  "RUNNING", "SCRATCH_KEY", "STATUSES", "STOPPED", "Progress", "RunInfo",
                                  "check_owner", "read_metrics")},
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 't2i_app' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
