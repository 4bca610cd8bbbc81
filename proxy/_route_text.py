"""How ``stillroom routes`` shows routes, events and shadow pairs to people (``--json`` prints
the admin API's JSON instead): pure functions of that JSON."""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]


def mode_text(route: JSON) -> str:
    mode = str(route["mode"])
    if mode == "canary":
        mode += f" {route['percent']:g}%"
    return mode


def route_line(route: JSON) -> str:
    tags = ",".join(f"{k}={v}" for k, v in route["tags"].items())
    match = f"{route['model']}" + (f" [{tags}]" if tags else "")
    student = route["student"]
    return (
        f"{route['name']:<20} {mode_text(route):<12} {match:<32} → {student['model']} at "
        f"{student['base_url']}  (v{route['version']})"
    )


def route_text(route: JSON, summary: JSON | None = None) -> str:
    student = route["student"]
    was = f" (was {route['previous_mode']})" if route["previous_mode"] else ""
    tags = ", ".join(f"{k}={v}" for k, v in route["tags"].items())
    key = f" (key from ${student['api_key_env']})" if student["api_key_env"] else ""
    tools = ", ".join(route["tools"]) if route["tools"] is not None else "any"
    rollback = route["rollback"]
    thresholds = ", ".join(f"{k} >= {v:g}" for k, v in route["thresholds"].items())
    lines = [
        f"{route['name']}  {mode_text(route)}{was}  version {route['version']}",
        f"  matches     model {route['model']}" + (f", tags {tags}" if tags else ""),
        f"  student     {student['model']} at {student['base_url']}{key}",
        f"  shadow      rate {route['shadow_rate']:g} (in full mode {route['full_shadow_rate']:g}),"
        f" {route['max_concurrency']} in flight at most, timeout {route['timeout_s']:g}s",
        f"  tools       {tools}",
        f"  rollback    over {rollback['max_fallback_rate']:.0%} fallbacks in "
        f"{rollback['window_s']:g}s (at least {rollback['min_requests']} requests)",
        f"  promotion   {route['min_shadow_pairs']} shadow pairs"
        + (f"; {thresholds}" if thresholds else "; no thresholds"),
    ]
    if summary is not None:
        lines.append("  " + summary_text(summary).replace("\n", "\n  "))
    return "\n".join(lines)


def summary_text(summary: JSON) -> str:
    lines = [f"shadow pairs {summary['pairs']} ({summary['student_failures']} student failures)"]
    for grader, found in summary["graders"].items():
        if found["mean"] is None:
            lines.append(f"  {grader:<20} no scores")
            continue
        lines.append(
            f"  {grader:<20} mean {found['mean']:.3f}  95% CI [{found['low']:.3f}, "
            f"{found['high']:.3f}]  n={found['n']}"
        )
    return "\n".join(lines)


def when(created_at: float) -> str:
    import datetime

    return f"{datetime.datetime.fromtimestamp(created_at, datetime.UTC):%Y-%m-%d %H:%M:%S}"


def event_line(event: JSON) -> str:
    return f"{event['id']:>6}  {when(event['created_at'])}  {event['message']}"


def pair_line(pair: JSON) -> str:
    """One shadow pair: id, time, the teacher's capture, the student's latency, the scores."""
    if pair["error"]:
        outcome = f"student failed: {pair['error']}"
    else:
        outcome = " ".join(
            f"{grader}={'-' if value is None else format(value, '.3f')}"
            for grader, value in pair["scores"].items()
        )
    student_ms = pair["student_latency_ms"]
    latency = f"{student_ms:>8.0f} ms" if student_ms is not None else " " * 11
    return (
        f"{pair['id']:>6}  {when(pair['created_at'])}  {pair['capture_id']}  {latency}  {outcome}"
    )
