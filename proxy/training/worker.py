"""The training process of a local job: ``python -m proxy.training.worker [--detach] JOB_DIR``.

``LocalBackend.launch`` runs it with ``--detach``: the launcher forks, writes the child's pid to
``worker.pid`` and exits at once; the child starts a new session (so a cancel can stop its whole
process group), sends its output to ``worker.log``, and trains. Without ``--detach`` it trains
in the foreground (for debugging a job by hand).

Whatever happens, the process ends with ``state.json`` saying ``succeeded`` (with the model's
directory) or ``failed`` (with a one-line reason); only a kill leaves no state, which the
backend reports as a process that died.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from proxy.training import _local_files as files
from proxy.training._local_files import TrainingFailed


def run(job_dir: Path) -> int:
    events = files.EventLog(job_dir)
    try:
        spec = files.read_json(job_dir / files.JOB_FILE)
        if spec is None:
            raise TrainingFailed(f"{job_dir / files.JOB_FILE} is missing or not JSON")
        files.write_json(job_dir / files.STATE_FILE, {"status": "running"})
        events.add(f"training process {os.getpid()} running", data={"pid": os.getpid()})
        from proxy.training._local_train import train

        model_dir = train(job_dir, spec, events)
    except TrainingFailed as exc:
        _fail(job_dir, events, exc.message, exc.code)
        return 1
    except BaseException as exc:  # the reason goes to the job; the traceback to worker.log
        import traceback

        traceback.print_exc()
        first = str(exc).strip().splitlines()
        _fail(job_dir, events, f"{type(exc).__name__}: {first[0] if first else ''}"[:500])
        return 1
    files.write_json(
        job_dir / files.STATE_FILE, {"status": "succeeded", "fine_tuned_model": str(model_dir)}
    )
    events.add(f"succeeded: the student is in {model_dir}", data={"model": str(model_dir)})
    events.close()
    return 0


def _fail(
    job_dir: Path, events: files.EventLog, message: str, code: str = "training_failed"
) -> None:
    error = {"message": message, "code": code, "param": None}
    events.add(f"failed: {message}", level="error")
    events.close()
    files.write_json(job_dir / files.STATE_FILE, {"status": "failed", "error": error})


def _detach(job_dir: Path) -> None:
    """Fork; the parent records the child's pid and exits, the child carries on alone."""
    pid = os.fork()
    if pid:
        (job_dir / files.PID_FILE).write_text(f"{pid}\n")
        os._exit(0)
    os.setsid()
    log = os.open(job_dir / files.LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


def main(argv: list[str]) -> int:
    detach = argv[:1] == ["--detach"]
    args = argv[1:] if detach else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m proxy.training.worker [--detach] JOB_DIR\n")
        return 2
    job_dir = Path(args[0])
    if not (job_dir / files.JOB_FILE).is_file():
        sys.stderr.write(f"error: {job_dir / files.JOB_FILE} does not exist\n")
        return 2
    if detach:
        _detach(job_dir)
    else:
        (job_dir / files.PID_FILE).write_text(f"{os.getpid()}\n")
    return run(job_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
