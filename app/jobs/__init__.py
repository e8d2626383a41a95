"""The training job manager: a run is a background job the server owns, never a click handler.

A package, one seam per file:
    form.py      the Train tab's form (and /train_start's inputs) → a `core.spec.RunSpec`
    manager.py   `JobManager`: start, follow, stop, resume, list and zip runs; `JobBusy`
    backends.py  how a run trains: a child `python -m core.train --spec run.json --json`, or
                 `core.train.run` in a thread (Hugging Face ZeroGPU)
    events.py    the one JSONL event reader, and folding events into a run's status
    runs.py      the runs folder: each run's files, `Job`, reading a run back, zips

Does not own: the training (`core.train`), its limits and defaults (`core.spec`), what the
page shows (`app.tabs.train`), or loading the checkpoints it writes (`app.catalog`).
"""

from app.jobs.form import FORM, spec_from_form
from app.jobs.manager import JobBusy, JobManager
from app.jobs.runs import Job
from core.spec import MAX_PASTED_CHARS, check_name
from core.spec import SERVER_LIMITS as LIMITS

__all__ = ["FORM", "LIMITS", "MAX_PASTED_CHARS", "Job", "JobBusy", "JobManager", "check_name", "spec_from_form"]
