"""``stillroom eval run|show|list``: score a student against the teacher on a dataset split.

``run`` sends the split's prompts (``holdout`` by default) to the student, grades each answer
against the teacher's captured one and prints the report; ``--check`` makes the exit status 1
when the verdict fails, for scripts and CI. ``show`` prints a stored eval, ``--compare`` another
eval's grader means beside it. Like the other data commands, each works on the database file
(``--database``; ``run`` then runs here) or a running server (``--url``, ``--admin-token``).
"""

from __future__ import annotations

import json
from typing import Any

import click

from proxy._capture_options import SourceSpec, json_option, read_json_file, source_options
from proxy._capture_source import JSON, BadUsage
from proxy._eval_source import EvalSource


def _run(source: SourceSpec, action: Any) -> Any:
    from proxy._eval_source import LocalEvals, RemoteEvals

    return source.run_on(LocalEvals, RemoteEvals, action)


def _pairs(values: tuple[str, ...], flag: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for value in values:
        name, sep, number = value.partition("=")
        try:
            out[name.strip()] = float(number)
        except ValueError:
            raise BadUsage(
                f"{flag} takes GRADER=MIN, e.g. rouge_l=0.6, not {value!r:.60}"
            ) from None
        if not sep or not name.strip():
            raise BadUsage(f"{flag} takes GRADER=MIN, not {value!r:.60}")
    return out


@click.group("eval")
def eval_group() -> None:
    """Evaluate a student against the teacher: run, show, list."""


@eval_group.command()
@click.option("--dataset", metavar="NAME", required=True, help="The dataset.")
@click.option(
    "--split", type=click.Choice(["holdout", "validation", "train"]), default="holdout",
    show_default=True, help="The split whose prompts the student answers.",
)  # fmt: skip
@click.option("--student-url", metavar="URL", required=True, help="The student's base URL, /v1.")
@click.option("--student-model", metavar="NAME", required=True, help="The model name it serves.")
@click.option(
    "--student-key-env", metavar="VAR",
    help="An environment variable holding the student's API key (the key is never stored).",
)  # fmt: skip
@click.option(
    "--grader", "graders", metavar="JSON", multiple=True,
    help="A grader object, e.g. '{\"type\": \"text_similarity\", \"name\": \"sim\", "
    "\"evaluation_metric\": \"cosine\"}' (repeatable) [default: exact match, tool calls, JSON "
    "validity, ROUGE-L, chrF].",
)  # fmt: skip
@click.option(
    "--graders-file", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
    help="A JSON list of grader objects.",
)  # fmt: skip
@click.option(
    "--threshold", "thresholds", metavar="GRADER=MIN", multiple=True,
    help="Pass only if the grader's mean is at least MIN (repeatable).",
)  # fmt: skip
@click.option("--judge-url", metavar="URL", help="Where score_model graders ask the judge, /v1.")
@click.option("--judge-model", metavar="NAME", help="The judge model.")
@click.option("--judge-key-env", metavar="VAR", help="An environment variable with its key.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate at most N examples.")
@click.option(
    "--concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
    help="Student requests in flight at once.",
)  # fmt: skip
@click.option(
    "--timeout", type=click.FloatRange(0.1, 3600), default=60.0, show_default=True,
    help="Seconds the student may take for one answer.",
)  # fmt: skip
@click.option("--name", metavar="TEXT", help="A label for the run.")
@click.option("--check", is_flag=True, help="Exit 1 when the verdict fails.")
@json_option
@source_options
def run(
    dataset: str,
    split: str,
    student_url: str,
    student_model: str,
    student_key_env: str | None,
    graders: tuple[str, ...],
    graders_file: str | None,
    thresholds: tuple[str, ...],
    judge_url: str | None,
    judge_model: str | None,
    judge_key_env: str | None,
    limit: int | None,
    concurrency: int,
    timeout: float,
    name: str | None,
    check: bool,
    as_json: bool,
    source: SourceSpec,
) -> None:
    """Run the student on dataset NAME's split and score it against the teacher."""
    body: JSON = {
        "dataset": dataset,
        "split": split,
        "student": {"base_url": student_url, "model": student_model},
        "concurrency": concurrency,
        "timeout_s": timeout,
        "thresholds": _pairs(thresholds, "--threshold"),
    }
    if student_key_env:
        body["student"]["api_key_env"] = student_key_env
    chosen = [_grader(text) for text in graders]
    if graders_file:
        listed = read_json_file(graders_file, "--graders-file")
        if not isinstance(listed, list):
            raise BadUsage("--graders-file must hold a JSON list of grader objects")
        chosen += listed
    if chosen:
        body["graders"] = chosen
    if judge_url or judge_model:
        if not (judge_url and judge_model):
            raise BadUsage("--judge-url and --judge-model go together")
        body["judge"] = {"base_url": judge_url, "model": judge_model}
        if judge_key_env:
            body["judge"]["api_key_env"] = judge_key_env
    if limit is not None:
        body["limit"] = limit
    if name is not None:
        body["name"] = name

    async def action(evals: EvalSource) -> JSON:
        return await evals.run_eval(body, _progress(as_json))

    report = _run(source, action)
    click.echo(json.dumps(report, ensure_ascii=False) if as_json else report_text(report))
    if check and not report.get("verdict", {}).get("passed"):
        raise SystemExit(1)


def _grader(text: str) -> JSON:
    try:
        value = json.loads(text)
    except ValueError:
        raise BadUsage(f"--grader takes a JSON object, not {text!r:.60}") from None
    if not isinstance(value, dict):
        raise BadUsage("--grader takes a JSON object")
    return value


def _progress(quiet: bool) -> Any:
    import sys

    if quiet or not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        click.echo(f"\r{done}/{total} answered", err=True, nl=done == total)

    return show


@eval_group.command()
@click.argument("eval_id")
@click.option("--compare", "other", metavar="EVAL_ID", help="Show another eval's means beside.")
@json_option
@source_options
def show(eval_id: str, other: str | None, as_json: bool, source: SourceSpec) -> None:
    """Show a stored eval's report."""

    async def action(evals: EvalSource) -> tuple[JSON, JSON | None]:
        first = await evals.get_eval(eval_id)
        return first, (await evals.get_eval(other) if other else None)

    report, baseline = _run(source, action)
    if as_json:
        both = {"eval": report, "compare": baseline}
        click.echo(json.dumps(report if baseline is None else both))
    else:
        click.echo(report_text(report, baseline))


@eval_group.command("list")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Evals to list."
)
@json_option
@source_options
def list_evals(limit: int, as_json: bool, source: SourceSpec) -> None:
    """List evals, newest first."""

    async def action(evals: EvalSource) -> JSON:
        return await evals.list_evals(limit)

    page = _run(source, action)
    if as_json:
        click.echo(json.dumps(page))
        return
    if not page["data"]:
        click.echo("no evals")
    for item in page["data"]:
        verdict = item.get("verdict") or {}
        state = item.get("status")
        if state == "completed":
            state = "passed" if verdict.get("passed") else "failed"
        student = item.get("student") or {}
        spec = item.get("spec") or {}
        click.echo(
            f"{item['id']}  {state:<9} {spec.get('dataset', '')}/{spec.get('split', '')}  "
            f"{student.get('model', '')}  n={item.get('total', 0)}"
        )


def report_text(report: JSON, baseline: JSON | None = None) -> str:
    """The report for people."""
    spec = report.get("spec") or {}
    student = report.get("student") or {}
    verdict = report.get("verdict") or {}
    lines = [
        f"eval {report.get('id')}  {report.get('status')}  "
        f"{'PASSED' if verdict.get('passed') else 'FAILED' if 'passed' in verdict else ''}",
        f"  student  {student.get('model')} at {student.get('base_url')}",
        f"  dataset  {spec.get('dataset')}/{spec.get('split')}: {report.get('total', 0)} "
        f"examples, {report.get('errors', 0)} unanswered",
        "",
        f"  {'grader':<18}{'mean':>8}{'95% CI':>18}{'n':>6}"
        + (f"{'compare':>10}{'delta':>9}" if baseline else ""),
    ]
    others = (baseline or {}).get("graders") or {}
    for name, summary in (report.get("graders") or {}).items():
        mean = summary.get("mean")
        interval = (
            f"[{summary['low']:.3f}, {summary['high']:.3f}]"
            if summary.get("low") is not None
            else ""
        )
        row = f"  {name:<18}{_num(mean):>8}{interval:>18}{summary.get('n', 0):>6}"
        if baseline:
            then = (others.get(name) or {}).get("mean")
            delta = mean - then if isinstance(mean, float) and isinstance(then, float) else None
            row += f"{_num(then):>10}{_num(delta, signed=True):>9}"
        lines.append(row)
    judge = report.get("judge")
    if judge:
        lines.append(
            f"  judge: {judge['wins']} wins, {judge['ties']} ties, {judge['losses']} losses "
            f"(student vs teacher)"
        )
    for what, unit in (("latency_ms", "ms"), ("output_tokens", "tokens")):
        block = report.get(what) or {}
        s, t = block.get("student") or {}, block.get("teacher") or {}
        lines.append(
            f"  {what.split('_')[0]:<9} student median {_num(s.get('median'))} {unit} "
            f"(p95 {_num(s.get('p95'))}), teacher {_num(t.get('median'))} {unit} "
            f"(p95 {_num(t.get('p95'))})"
        )
    for tag, graders in list((report.get("by_tag") or {}).items())[:10]:
        means = ", ".join(f"{name} {_num(s.get('mean'))}" for name, s in graders.items())
        lines.append(f"  tag {tag}: {means}")
    worst = report.get("worst") or []
    if worst:
        lines.append("  worst examples:")
    for example in worst[:3]:
        prompt = (example.get("prompt") or [{}])[-1].get("content")
        lines.append(f"    {example['capture_id']}  mean {_num(example.get('mean_score'))}")
        lines.append(f"      prompt:  {_short(prompt)}")
        lines.append(f"      teacher: {_short(_said(example.get('teacher')))}")
        lines.append(
            f"      student: {_short(_said(example.get('student')) or example.get('error'))}"
        )
    for reason in verdict.get("reasons") or []:
        lines.append(f"  ✗ {reason}")
    return "\n".join(lines)


def _said(message: object) -> str | None:
    if not isinstance(message, dict):
        return None
    calls = message.get("tool_calls") or []
    if calls:
        return " ".join(
            f"{c.get('function', {}).get('name')}({c.get('function', {}).get('arguments')})"
            for c in calls
            if isinstance(c, dict)
        )
    content = message.get("content")
    return content if isinstance(content, str) else None


def _short(text: object) -> str:
    value = str(text) if text is not None else ""
    value = " ".join(value.split())
    return value[:100] + ("…" if len(value) > 100 else "")


def _num(value: object, *, signed: bool = False) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}" if isinstance(value, float) else str(value)
