"""``LocalBackend``: train the student on this machine, in a training process of its own.

``launch`` copies the exported dataset into the job's directory (``STILLROOM_MODELS_DIR/<job
id>/``, laid out in ``proxy.training._local_files``), writes what to train to ``job.json`` and
starts ``python -m proxy.training.worker`` detached from the caller: a new session, adopted by
init, its output in ``worker.log``. The proxy's event loop never trains, and the training
survives a restart of the proxy (or the end of the ``stillroom train start`` that launched it).
``poll`` reads the events and state the process wrote; a process that died without writing a
result fails the job with the last line of its output. ``cancel`` stops the process group
(SIGTERM, then SIGKILL after a grace period).

The training itself (TRL SFT or DPO, LoRA or full fine-tuning, on the GPU when there is one) is
``proxy.training._local_train``; it needs the ``train`` extra. ``check_local_job`` refuses up
front what cannot work here: no ``train`` extra, a base model that is not a local directory or
GGUF file (nothing is downloaded at run time), unknown or out-of-range hyperparameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from proxy.training import _local_files as files
from proxy.training.base import ProviderRefused, ProviderState, TrainingFiles
from storage.jobs import Job, JobError, NewJobEvent

TRAIN_EXTRA: Final = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")
NOT_INSTALLED: Final = (
    "the local backend needs the train extra (torch, transformers, trl, peft, datasets): "
    "pip install 'stillroom[train]'"
)
_FORMATS: Final = {"sft": "hf-prompt-completion", "dpo": "openai-dpo"}
_CANCEL_GRACE: Final = 10.0
_START_TIMEOUT: Final = 30.0

# name -> (type, minimum, maximum, default or None); the types a JSON body may carry.
HYPERPARAMETERS: Final[dict[str, tuple[type, float, float, float | None]]] = {
    "n_epochs": (int, 1, 50, 3),
    "learning_rate": (float, 1e-9, 1.0, None),  # default: 2e-4 with LoRA, 2e-5 without
    "batch_size": (int, 1, 256, 8),
    "gradient_accumulation_steps": (int, 1, 256, 1),
    "lora_rank": (int, 0, 1024, 16),  # 0: full fine-tuning
    "lora_alpha": (int, 1, 4096, None),  # default: twice the rank
    "max_length": (int, 16, 131_072, 2048),  # longer examples are dropped, not truncated
    "max_steps": (int, 1, 10_000_000, None),  # default: as many as the epochs take
    "warmup_ratio": (float, 0.0, 0.5, 0.03),
    "beta": (float, 1e-6, 100.0, 0.1),  # DPO only
}


class LocalJobInvalid(ValueError):
    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


@dataclass(frozen=True, slots=True)
class LocalJob:
    base_model: str  # an absolute path
    hyperparameters: dict[str, Any]


def check_local_job(base_model: str, method: str, hyperparameters: dict[str, Any]) -> LocalJob:
    """What a local job may record; raises ``LocalJobInvalid``."""
    missing = [name for name in TRAIN_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise LocalJobInvalid(
            f"{NOT_INSTALLED} (missing: {', '.join(missing)})", code="backend_unavailable"
        )
    return LocalJob(check_base_model(base_model), check_hyperparameters(method, hyperparameters))


def check_base_model(base_model: str) -> str:
    path = Path(base_model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LocalJobInvalid(
                f"base model {base_model}: the directory has no config.json (a Hugging Face "
                "model directory, as save_pretrained writes it, or a .gguf file)",
                code="base_model_invalid",
                param="base_model",
            )
        return str(path.resolve())
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise LocalJobInvalid(
                f"base model {base_model} is a file but not a .gguf file",
                code="base_model_invalid",
                param="base_model",
            )
        return str(path.resolve())
    raise LocalJobInvalid(
        f"base model {base_model} is not a local directory or GGUF file; the local backend "
        "never downloads models: fetch it first (e.g. `hf download "
        f"{base_model} --local-dir models/{Path(base_model).name}`) and pass that directory",
        code="base_model_not_found",
        param="base_model",
    )


def check_hyperparameters(method: str, given: dict[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for name, value in given.items():
        if name not in HYPERPARAMETERS:
            known = ", ".join(HYPERPARAMETERS)
            raise LocalJobInvalid(
                f"hyperparameter {name!r:.60} is not one the local backend knows: {known}",
                code="invalid_hyperparameter",
                param="hyperparameters",
            )
        kind, low, high, _ = HYPERPARAMETERS[name]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (kind is int and not float(value).is_integer()):
            raise LocalJobInvalid(
                f"hyperparameter {name} must be {'an integer' if kind is int else 'a number'}",
                code="invalid_hyperparameter",
                param="hyperparameters",
            )
        if not low <= value <= high:
            raise LocalJobInvalid(
                f"hyperparameter {name} must be from {low:g} to {high:g}",
                code="invalid_hyperparameter",
                param="hyperparameters",
            )
        checked[name] = kind(value)
    if "beta" in checked and method != "dpo":
        raise LocalJobInvalid(
            "hyperparameter beta is for --method dpo",
            code="invalid_hyperparameter",
            param="hyperparameters",
        )
    return checked


class LocalBackend:
    name = "local"

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self._offsets: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.models_dir)!r})"

    def export_format(self, method: str) -> str:
        return _FORMATS[method]

    def job_dir(self, job: Job) -> Path:
        return (self.models_dir / job.id).resolve()

    async def aclose(self) -> None:
        """Nothing to release: training processes outlive this backend on purpose."""

    async def launch(self, job: Job, training: TrainingFiles) -> ProviderState:
        job_dir = self.job_dir(job)
        pid = files.read_pid(job_dir)
        if pid is not None and files.is_running(pid, job_dir):
            # Launched before, but the store never heard (a crash between the two): adopt it.
            return ProviderState(status="running", provider_job_id=job.id)
        try:
            check_base_model(job.base_model)
        except LocalJobInvalid as exc:
            raise ProviderRefused(JobError(exc.message, exc.code, exc.param)) from None
        await asyncio.to_thread(self._prepare, job, job_dir, training)
        pid = await self._start(job_dir)
        event = NewJobEvent(
            f"training process {pid} started in {job_dir}",
            data={"pid": pid, "directory": str(job_dir)},
        )
        return ProviderState(status="queued", provider_job_id=job.id, events=[event])

    async def poll(self, job: Job) -> ProviderState:
        job_dir = self.job_dir(job)
        events = self._read_events(job, job_dir)
        state = files.read_json(job_dir / files.STATE_FILE) or {}
        status = state.get("status")
        if status in ("succeeded", "failed", "cancelled"):
            return ProviderState(
                status=status,
                fine_tuned_model=_text(state.get("fine_tuned_model")),
                error=_error(state.get("error")),
                events=events,
            )
        pid = files.read_pid(job_dir)
        if pid is None or not files.is_running(pid, job_dir):
            # Read again: the process may have written its result just before exiting.
            events += self._read_events(job, job_dir)
            state = files.read_json(job_dir / files.STATE_FILE) or {}
            if state.get("status") in ("succeeded", "failed", "cancelled"):
                return ProviderState(
                    status=state["status"],
                    fine_tuned_model=_text(state.get("fine_tuned_model")),
                    error=_error(state.get("error")),
                    events=events,
                )
            tail = files.log_tail(job_dir)
            message = "the training process exited without a result"
            if tail:
                message += f"; its last output: {tail}"
            return ProviderState(
                status="failed",
                error=JobError(message, code="training_process_died"),
                events=events,
            )
        return ProviderState(status=status if isinstance(status, str) else None, events=events)

    async def cancel(self, job: Job) -> ProviderState:
        job_dir = self.job_dir(job)
        pid = files.read_pid(job_dir)
        stopped = False
        if pid is not None and files.is_running(pid, job_dir):
            stopped = await _stop(pid, job_dir)
        state = files.read_json(job_dir / files.STATE_FILE) or {}
        if state.get("status") in ("succeeded", "failed"):
            return ProviderState(status=state["status"])  # it finished first
        with contextlib.suppress(OSError):
            files.write_json(job_dir / files.STATE_FILE, {"status": "cancelled"})
        detail = f"training process {pid} stopped" if stopped else "no training process running"
        return ProviderState(status="cancelled", events=[NewJobEvent(detail)])

    # -- internals ----------------------------------------------------------------------------

    def _read_events(self, job: Job, job_dir: Path) -> list[NewJobEvent]:
        """The events since the last read; after a restart, all of them again (``source_id``
        makes recording them idempotent)."""
        raw, self._offsets[job.id] = files.read_events(job_dir, self._offsets.get(job.id, 0))
        return [
            NewJobEvent(
                event.message,
                level=event.level if event.level in ("info", "warn", "error") else "info",
                data=event.data,
                created_at=event.created_at,
                source_id=f"local-{event.id}",
            )
            for event in raw
        ]

    def _prepare(self, job: Job, job_dir: Path, training: TrainingFiles) -> None:
        data = job_dir / files.DATA_DIR
        data.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(training.train, data / "train.jsonl")
        validation = None
        if training.validation is not None:
            shutil.copyfile(training.validation, data / "validation.jsonl")
            validation = "validation.jsonl"
        for stale in (files.STATE_FILE, files.EVENTS_FILE, files.PID_FILE):
            (job_dir / stale).unlink(missing_ok=True)
        files.write_json(
            job_dir / files.JOB_FILE,
            {
                "id": job.id,
                "dataset": job.dataset,
                "dataset_hash": job.dataset_hash,
                "base_model": job.base_model,
                "method": job.method,
                "format": _FORMATS[job.method],
                "hyperparameters": job.hyperparameters,
                "seed": job.seed,
                "suffix": job.suffix,
                "train_file": "train.jsonl",
                "validation_file": validation,
                "train_examples": training.train_examples,
                "validation_examples": training.validation_examples,
            },
        )

    async def _start(self, job_dir: Path) -> int:
        env = dict(os.environ)
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        env.pop("STILLROOM_TRAIN_API_KEY", None)  # the training process has no use for secrets
        env.pop("STILLROOM_ADMIN_TOKEN", None)
        env.pop("STILLROOM_UPSTREAM_API_KEY", None)
        launcher = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.training.worker", "--detach", str(job_dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        try:
            _, err = await asyncio.wait_for(launcher.communicate(), _START_TIMEOUT)
        except TimeoutError:
            launcher.kill()
            await launcher.wait()
            raise ProviderRefused(
                JobError("the training process did not start in time", "worker_failed")
            ) from None
        pid = files.read_pid(job_dir)
        if launcher.returncode != 0 or pid is None:
            lines = err.decode("utf-8", "replace").strip().splitlines()
            detail = lines[-1][:300] if lines else f"exit status {launcher.returncode}"
            raise ProviderRefused(
                JobError(f"could not start the training process: {detail}", "worker_failed")
            )
        return pid


async def _stop(pid: int, job_dir: Path) -> bool:
    """SIGTERM the process group, SIGKILL it after the grace period; True if it was running."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.monotonic() + _CANCEL_GRACE
    while time.monotonic() < deadline:
        if not files.is_running(pid, job_dir):
            return True
        await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return True


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _error(value: object) -> JobError | None:
    if not isinstance(value, dict) or not isinstance(value.get("message"), str):
        return None
    code, param = value.get("code"), value.get("param")
    return JobError(
        value["message"],
        code if isinstance(code, str) else None,
        param if isinstance(param, str) else None,
    )
