"""The ``TrainingBackend`` interface: launch a job, poll it, cancel it.

A backend never trains inside the caller's event loop: ``launch`` hands the work to something
else (a provider's servers; for the local backend, a child process) and returns as soon as it
is accepted, ``poll`` reads where that work stands, ``cancel`` stops it. All three return a
``ProviderState``: what changed, and new events. The runner (``proxy.training.runner``) writes
that to the store; backends never touch the store.

Failures are one of two exceptions: ``TransientError`` (the provider could not be reached, timed
out, answered 5xx or 429: try again later, the job is unchanged) and ``ProviderRefused`` (the
provider said no, e.g. 400 on create: the job fails with the provider's error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from storage.jobs import Job, JobError, NewJobEvent


@dataclass(frozen=True, slots=True)
class TrainingFiles:
    """The dataset exported for this backend (``train`` always; ``validation`` if non-empty)."""

    train: Path
    validation: Path | None = None
    train_examples: int = 0
    validation_examples: int = 0


@dataclass(frozen=True, slots=True)
class ProviderState:
    """What a backend learned; None fields are unchanged."""

    status: str | None = None
    provider_job_id: str | None = None
    provider_files: dict[str, str] | None = None
    fine_tuned_model: str | None = None
    error: JobError | None = None
    events: list[NewJobEvent] = field(default_factory=list)


class TransientError(Exception):
    """The provider could not answer now (connection, timeout, 5xx, 429): retry later."""


class ProviderRefused(Exception):
    """The provider refused the request (4xx): the job fails with ``error``."""

    def __init__(self, error: JobError) -> None:
        super().__init__(error.message)
        self.error = error


class BackendUnavailable(Exception):
    """The backend cannot be used here (not configured, not in this version)."""


class TrainingBackend(Protocol):
    name: str

    def export_format(self, method: str) -> str:
        """The ``storage.export`` format this backend trains on for ``method``."""
        ...

    async def launch(self, job: Job, files: TrainingFiles) -> ProviderState:
        """Start ``job`` on ``files``; returns once the work is accepted (never waits for it)."""
        ...

    async def poll(self, job: Job) -> ProviderState:
        """Where the launched ``job`` stands, with the events since the last poll (or more:
        events carry a ``source_id``, so repeats are recorded once)."""
        ...

    async def cancel(self, job: Job) -> ProviderState:
        """Stop the launched ``job``."""
        ...

    async def aclose(self) -> None:
        """Release connections (or processes)."""
        ...
