"""One batch job in a worker process: `python -m quantcli.pipeline.batch_worker JOB.json RESULT.json`.

The parent (pipeline/batch.py) starts it with SIGINT ignored; once the stop handlers are installed here, SIGINT
and SIGTERM raise Interrupted like in a single convert, the job's writers remove their partial files, and the
process exits 128+signal without a traceback. The result (a JobResult as JSON) is written atomically, so the
parent reads a whole result or none.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path


def main(argv: list[str]) -> int:
    from ..errors import Interrupted
    from ..io.atomic import atomic_file
    from . import signals
    from .batch import Job, JobResult, _stderr_warn, run_job

    signals.install()
    job_file, result_file = Path(argv[0]), Path(argv[1])
    spec = json.loads(job_file.read_text(encoding="utf-8"))
    job = Job(**spec["job"])
    try:
        result = run_job(job, force=spec["force"], threads=spec["threads"], cache_dir=spec["cache_dir"],
                         warn=_stderr_warn)
        code = 0
    except Interrupted as exc:
        result = JobResult(job.id, job.model, job.recipe_name, "failed", error=str(exc), exit_code=exc.exit_code)
        code = exc.exit_code
    with atomic_file(result_file) as fp:
        fp.write(json.dumps(asdict(result)).encode("utf-8"))
    return code


def entry(argv: list[str]) -> int:
    """main() with the exits of a stopped worker: 128+signal, never a traceback."""
    from ..errors import Interrupted

    try:
        return main(argv)
    except KeyboardInterrupt:            # a signal before the handlers were in place: nothing was written yet
        return 130
    except Interrupted as exc:           # a signal outside the job (reading the job, writing the result)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(entry(sys.argv[1:]))
