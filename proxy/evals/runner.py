"""Run an eval: a student answers a dataset split, each answer is scored against the teacher's.

``EvalSpec`` (``proxy.evals.spec``) names the dataset and split (``holdout`` by default), the
student (any OpenAI-compatible endpoint: ``stillroom student serve``, vLLM, a provider's
fine-tuned model), the graders (``proxy.evals.graders``; OpenAI's grader shapes), thresholds
and an optional pairwise judge. ``run_eval`` rebuilds each example exactly as the dataset's
exports do, sends its prompt to the student (at most ``concurrency`` at once, each bounded by
``timeout_s``), grades the answer against the teacher's captured one (or the operator's
correction), and keeps every graded example as an item of the eval and the report as the
eval's document (``storage.documents``, kind ``eval``), so runs are stored, listed and
comparable.

Requests to the student, and to the judge through the proxy, carry ``X-Stillroom-Source: eval``
or ``judge``: a Stillroom proxy on the way records them as its own traffic, never trained on.

The report (``proxy.evals.report``): per grader and per tag the mean with a 95% interval, the
judge's win/tie/loss, student vs teacher latency and tokens, the worst examples side by side,
and the verdict against the thresholds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import httpx
import orjson

from proxy.evals.answer import Answer
from proxy.evals.graders import Grader, parse_graders
from proxy.evals.spec import Endpoint, EvalError, EvalSpec, Progress
from storage.base import Store
from storage.errors import StoreError

logger = logging.getLogger("stillroom.evals")

KIND: Final = "eval"
PROGRESS_INTERVAL_S: Final = 1.0  # ``done`` is saved in the document at most this often


def new_eval_id() -> str:
    from storage.ids import new_capture_id

    return "eval-" + new_capture_id().replace("-", "")


def running_document(spec: EvalSpec, eval_id: str, total: int) -> dict[str, Any]:
    """An eval's document while it runs: ``done`` of ``total`` examples answered so far."""
    return {"object": "eval", "id": eval_id, "spec": spec.to_json(),
            "student": asdict(spec.student), "status": "running", "created_at": time.time(),
            "total": total, "done": 0}  # fmt: skip


# -- running ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Case:
    capture_id: str
    tags: dict[str, str]
    request: dict[str, Any]
    teacher: dict[str, Any]
    teacher_latency_ms: float | None
    teacher_tokens: int | None
    student: dict[str, Any] | None = None
    student_latency_ms: float | None = None
    student_tokens: int | None = None
    error: str | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    judge: dict[str, Any] | None = None


async def run_eval(
    store: Store,
    spec: EvalSpec,
    *,
    eval_id: str | None = None,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    document: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``spec`` to the end; the stored eval document's body (the report).

    ``document``: the running document, already stored (``running_document``; the admin API
    writes it to answer at once), else written once the examples are known. ``done`` is saved
    at most once a second; a run that then fails or is cancelled is saved as ``"failed"`` with
    its ``error`` (``"interrupted"``) before the exception goes on.
    """
    graders = parse_graders(list(spec.graders))
    cases = None
    if document is None:
        cases = await _cases(store, spec)
        document = running_document(spec, eval_id or new_eval_id(), len(cases))
        await store.put_document(KIND, document["id"], document, if_version=0)
    try:
        if cases is None:
            cases = await _cases(store, spec)
        return await _run(store, spec, graders, cases, document, progress, transport)
    except BaseException as exc:
        error = exc.message if isinstance(exc, EvalError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, asyncio.CancelledError):
            error = "interrupted"
        failed = {"status": "failed", "error": error[:300], "finished_at": time.time()}
        await _save(store, document | failed, "that it failed")
        raise


async def _run(
    store: Store,
    spec: EvalSpec,
    graders: list[Grader],
    cases: list[_Case],
    document: dict[str, Any],
    progress: Progress | None,
    transport: httpx.AsyncBaseTransport | None,
) -> dict[str, Any]:
    from proxy.evals.report import build_report

    eval_id, total = str(document["id"]), len(cases)
    running = document | {"total": total}
    async with httpx.AsyncClient(trust_env=False, transport=transport) as client:
        limit = asyncio.Semaphore(spec.concurrency)
        done, saved = 0, time.monotonic()

        async def one(case: _Case) -> None:
            nonlocal done, saved
            async with limit:
                await _ask(client, spec.student, case, spec.timeout_s, source="eval")
                if case.student is not None and spec.judge is not None:
                    await _judge(client, spec.judge, graders, case, spec.timeout_s)
            done += 1
            if progress is not None:
                progress(done, total)
            if done < total and time.monotonic() - saved >= PROGRESS_INTERVAL_S:
                saved = time.monotonic()
                await _save(store, running | {"done": done}, "its progress")

        try:  # a task group, so one failure stops the others (no progress after the failure)
            async with asyncio.TaskGroup() as group:
                for case in cases:
                    group.create_task(one(case))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
    await asyncio.to_thread(_grade, graders, cases)
    await store.add_items(KIND, eval_id, [_item(case) for case in cases])
    report = build_report(cases_json=[_item(case) for case in cases], graders=graders,
                          thresholds=spec.thresholds)  # fmt: skip
    body = running | {"status": "completed", "finished_at": time.time(), "done": total}
    body |= report
    await store.put_document(KIND, eval_id, body)
    return body


async def _save(store: Store, document: dict[str, Any], what: str) -> None:
    """Progress is only shown, and saving a failure must not hide it: a store error is logged."""
    try:
        await store.put_document(KIND, str(document["id"]), document)
    except StoreError as exc:
        logger.warning("eval %s: could not save %s: %s", document["id"], what, exc)


async def _cases(store: Store, spec: EvalSpec) -> list[_Case]:
    from storage._export_rows import rebuild

    dataset = await store.get_dataset(spec.dataset)
    if dataset is None:
        raise EvalError(f"no dataset named {spec.dataset}", "dataset", "not_found")
    cases: list[_Case] = []
    async for batch in store.dataset_items(spec.dataset, spec.split):  # type: ignore[arg-type]
        for _, stored in batch:
            example = await rebuild(store, stored)
            if example is None or stored is None:
                continue  # deleted or now rejected since the dataset was made
            record = stored.record
            request: dict[str, Any] = {"messages": example.messages[:-1]}
            if example.tools:
                request["tools"] = example.tools
            if example.parallel_tool_calls is not None:
                request["parallel_tool_calls"] = example.parallel_tool_calls
            original = _json_object(record.request_body)
            for key in ("response_format", "temperature", "max_tokens",
                        "max_completion_tokens", "top_p", "seed", "stop"):  # fmt: skip
                if key in original:
                    request[key] = original[key]
            tags = {k: v for k, v in record.tags.items() if not k.startswith("stillroom.")}
            cases.append(
                _Case(
                    capture_id=record.id,
                    tags=tags,
                    request=request,
                    teacher=example.messages[-1],
                    teacher_latency_ms=record.latency_ms,
                    teacher_tokens=record.usage.output_tokens,
                )
            )
            if spec.limit is not None and len(cases) >= spec.limit:
                return cases
    if not cases:
        raise EvalError(
            f"dataset {spec.dataset} has no {spec.split} examples to evaluate", "split", "empty"
        )
    return cases


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


async def _ask(
    client: httpx.AsyncClient, endpoint: Endpoint, case: _Case, timeout: float, *, source: str
) -> None:
    body = {**case.request, "model": endpoint.model}
    headers = {"content-type": "application/json", "x-stillroom-source": source}
    if key := endpoint.key():
        headers["authorization"] = f"Bearer {key}"
    started = time.perf_counter()
    try:
        response = await client.post(
            endpoint.base_url + "/chat/completions",
            content=orjson.dumps(body),
            headers=headers,
            timeout=timeout,
        )
        case.student_latency_ms = round((time.perf_counter() - started) * 1000.0, 2)
        answer = response.json()
        if response.status_code >= 400:
            error = answer.get("error") if isinstance(answer, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            case.error = f"student answered {response.status_code}: {message or ''}"[:300]
            return
        case.student = answer["choices"][0]["message"]
        usage = answer.get("usage") or {}
        tokens = usage.get("completion_tokens")
        case.student_tokens = tokens if isinstance(tokens, int) else None
    except httpx.TimeoutException:
        case.error = f"student timeout after {timeout:g}s"
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, KeyError, IndexError, TypeError) as exc:
        case.error = f"student failed: {type(exc).__name__}: {str(exc)[:200]}"


async def _judge(
    client: httpx.AsyncClient,
    judge: Endpoint,
    graders: list[Grader],
    case: _Case,
    timeout: float,
) -> None:
    from proxy.evals.judge import judge_pair

    assert case.student is not None

    async def complete(messages: list[dict[str, Any]]) -> str:
        headers = {"content-type": "application/json", "x-stillroom-source": "judge"}
        if key := judge.key():
            headers["authorization"] = f"Bearer {key}"
        body = {"model": judge.model, "messages": messages, "temperature": 0}
        response = await client.post(
            judge.base_url + "/chat/completions",
            content=orjson.dumps(body),
            headers=headers,
            timeout=timeout,
        )
        response.raise_for_status()
        text = response.json()["choices"][0]["message"].get("content")
        return text if isinstance(text, str) else ""

    for grader in graders:
        if not grader.needs_judge:
            continue
        try:
            result = await judge_pair(
                complete,
                case.request["messages"],
                student=Answer.from_message(case.student),
                teacher=Answer.from_message(case.teacher),
                rubric=getattr(grader, "rubric", None),
                tools=case.request.get("tools"),
            )
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            case.judge = {"grader": grader.name, "error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        case.judge = {
            "grader": grader.name,
            "outcome": result.outcome,
            "teacher_first": result.teacher_first,
            "student_first": result.student_first,
        }


def _grade(graders: list[Grader], cases: list[_Case]) -> None:
    answered = [case for case in cases if case.student is not None]
    pairs = [
        (Answer.from_message(c.student or {}), Answer.from_message(c.teacher)) for c in answered
    ]
    requests = [case.request for case in answered]
    for grader in graders:
        if grader.needs_judge:
            continue
        scores = grader.grade_batch(pairs, requests)
        for case, score in zip(answered, scores, strict=True):
            case.scores[grader.name] = score
    for case in cases:
        if case.student is None:  # no answer: every grader scores it 0 (it counts, as a loss)
            case.scores = {g.name: 0.0 for g in graders if not g.needs_judge}


def _item(case: _Case) -> dict[str, Any]:
    return {
        "type": "example",
        "capture_id": case.capture_id,
        "tags": case.tags,
        "prompt": case.request["messages"][-1:],
        "teacher": case.teacher,
        "student": case.student,
        "error": case.error,
        "scores": case.scores,
        "judge": case.judge,
        "teacher_latency_ms": case.teacher_latency_ms,
        "student_latency_ms": case.student_latency_ms,
        "teacher_tokens": case.teacher_tokens,
        "student_tokens": case.student_tokens,
    }
