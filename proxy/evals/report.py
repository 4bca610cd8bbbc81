"""An eval's report from its graded examples (pure): what ``stillroom eval show`` prints.

* ``graders``: per grader, the mean over the examples it applied to with a 95% interval
  (``proxy.evals.stats.mean_ci``) and its ``n``;
* ``by_tag``: the same per capture tag (``key=value``), for tags on at least two examples;
* ``judge``: the pairwise judge's win/tie/loss for the student, when one ran;
* ``latency_ms`` and ``output_tokens``: student vs teacher, median and p95 (the teacher's from
  the capture); ``errors``: examples the student did not answer;
* ``worst``: the examples with the lowest mean score, teacher and student side by side;
* ``verdict``: passed or not against the thresholds, with one reason per failed check
  (``proxy.evals.stats.verdict``; a judge grader's threshold applies to its non-loss share).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from proxy.evals.graders import Grader
from proxy.evals.stats import Summary, mean_ci, verdict, win_tie_loss

WORST = 5


def build_report(
    *, cases_json: Sequence[dict[str, Any]], graders: Sequence[Grader], thresholds: dict[str, Any]
) -> dict[str, Any]:
    summaries: dict[str, Summary] = {}
    for grader in graders:
        if grader.needs_judge:
            outcomes = [
                (case.get("judge") or {}).get("outcome")
                for case in cases_json
                if (case.get("judge") or {}).get("grader") == grader.name
            ]
            summaries[grader.name] = win_tie_loss(outcomes).non_loss()
            continue
        summaries[grader.name] = mean_ci(_scores(cases_json, grader.name))
    passed, reasons = verdict(summaries, thresholds)
    return {
        "graders": {name: _summary(s) for name, s in summaries.items()},
        "by_tag": _by_tag(cases_json, [g for g in graders if not g.needs_judge]),
        "judge": _judge(cases_json),
        "latency_ms": _compare(cases_json, "latency_ms"),
        "output_tokens": _compare(cases_json, "tokens"),
        "errors": sum(1 for case in cases_json if case.get("error")),
        "worst": _worst(cases_json),
        "verdict": {"passed": passed, "reasons": reasons, "thresholds": thresholds},
    }


def _scores(cases: Sequence[dict[str, Any]], name: str) -> list[float]:
    out = []
    for case in cases:
        value = (case.get("scores") or {}).get(name)
        if isinstance(value, int | float) and math.isfinite(value):
            out.append(float(value))
    return out


def _summary(summary: Summary) -> dict[str, Any]:
    body = asdict(summary)
    for key in ("mean", "low", "high"):
        if body[key] is not None:
            body[key] = round(body[key], 4)
    return body


def _by_tag(cases: Sequence[dict[str, Any]], graders: Sequence[Grader]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for case in cases:
        for key, value in (case.get("tags") or {}).items():
            groups[f"{key}={value}"].append(case)
    return {
        tag: {g.name: _summary(mean_ci(_scores(members, g.name))) for g in graders}
        for tag, members in sorted(groups.items())
        if len(members) >= 2
    }


def _judge(cases: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    judged = [case["judge"] for case in cases if case.get("judge")]
    if not judged:
        return None
    counts = win_tie_loss(j.get("outcome") for j in judged)
    rates = counts.rates()
    return {
        "wins": counts.wins,
        "ties": counts.ties,
        "losses": counts.losses,
        "win_rate": round(rates[0], 4) if rates else None,
        "tie_rate": round(rates[1], 4) if rates else None,
        "loss_rate": round(rates[2], 4) if rates else None,
        "errors": sum(1 for j in judged if j.get("error")),
    }


def _compare(cases: Sequence[dict[str, Any]], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in ("student", "teacher"):
        values = sorted(
            float(case[f"{side}_{what}"])
            for case in cases
            if isinstance(case.get(f"{side}_{what}"), int | float)
        )
        out[side] = {
            "median": round(statistics.median(values), 2) if values else None,
            "p95": round(values[min(len(values) - 1, int(0.95 * len(values)))], 2)
            if values
            else None,
            "n": len(values),
        }
    student, teacher = out["student"]["median"], out["teacher"]["median"]
    out["ratio"] = round(student / teacher, 4) if student is not None and teacher else None
    return out


def _worst(cases: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    def mean(case: dict[str, Any]) -> float:
        values = [v for v in (case.get("scores") or {}).values() if isinstance(v, int | float)]
        return sum(values) / len(values) if values else 1.0

    ranked = sorted(cases, key=lambda case: (mean(case), case["capture_id"]))
    return [
        {
            "capture_id": case["capture_id"],
            "mean_score": round(mean(case), 4),
            "scores": case.get("scores"),
            "prompt": case.get("prompt"),
            "teacher": case.get("teacher"),
            "student": case.get("student"),
            "error": case.get("error"),
        }
        for case in ranked[:WORST]
    ]
