"""Datasets as text for people: the table of ``datasets list`` and the page of ``datasets show``.

Everything here reads the admin API's dataset JSON (``Dataset.to_json``), so a local database
and a running server print the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy._capture_text import clean, format_time

JSON = dict[str, Any]
SPLITS = ("train", "validation", "holdout")


def _int(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "-"


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def datasets_table(datasets: list[JSON]) -> str:
    rows = [["NAME", "CREATED (UTC)", "TRAIN", "VALIDATION", "HOLDOUT", "REJECTED", "HASH"]]
    for dataset in datasets:
        counts = _mapping(dataset.get("counts"))
        rejected = sum(v for v in _mapping(dataset.get("rejected")).values() if isinstance(v, int))
        rows.append(
            [
                clean(str(dataset.get("name", "?"))),
                format_time(dataset.get("created_at")),
                *(_int(counts.get(split, 0)) for split in SPLITS),
                _int(rejected),
                _short_hash(dataset.get("content_hash")),
            ]
        )
    return "\n".join(_table(rows, right={2, 3, 4, 5}))


def _short_hash(value: object) -> str:
    if not isinstance(value, str) or not value:
        return "-"
    kind, _, digest = value.rpartition(":")
    return f"{kind}:{digest[:12]}" if kind else digest[:12]


def _filter_text(value: object) -> str:
    parts = []
    for name, item in sorted(_mapping(value).items()):
        for one in item if isinstance(item, list) else [item]:
            parts.append(f"{name}={one}")
    return clean(" ".join(parts)) if parts else "every capture"


def _options_text(spec: Mapping[str, Any]) -> str:
    price = spec.get("price_per_million")
    price_text = f"${price:,.2f} per 1M tokens" if isinstance(price, int | float) else "-"
    return (
        f"validation {spec.get('validation', '-')}, holdout {spec.get('holdout', '-')} by "
        f"{spec.get('holdout_by', '-')}, dedupe {spec.get('dedupe', '-')}, at most "
        f"{_int(spec.get('max_tokens'))} tokens an example, {price_text}"
    )


def _cost(value: object) -> str:
    return f"${value:,.2f}" if isinstance(value, int | float) else "-"


def _mean(value: object) -> str:
    return f"{value:,.1f}" if isinstance(value, int | float) else "-"


def dataset_text(dataset: JSON) -> str:
    """``datasets show``: what it was made from, counts per split, what was left out and why,
    token statistics and the leakage check."""
    spec = _mapping(dataset.get("spec"))
    lines = [
        f"dataset {clean(str(dataset.get('name', '?')))}",
        f"  created       {format_time(dataset.get('created_at'))} UTC "
        f"(Stillroom {clean(str(dataset.get('version', '?')))})",
        f"  content hash  {clean(str(dataset.get('content_hash', '-')))}",
        f"  filter        {_filter_text(spec.get('filter'))}",
        f"  options       {_options_text(spec)}",
        f"  considered    {_int(dataset.get('considered'))} captures",
        "",
    ]
    counts = _mapping(dataset.get("counts"))
    tokens = _mapping(dataset.get("tokens"))
    rows = [["SPLIT", "EXAMPLES", "TOKENS", "MIN", "MEAN", "P95", "MAX", "ANSWER", "COST/EPOCH"]]
    for split in SPLITS:
        stats = _mapping(tokens.get(split))
        rows.append(
            [
                split,
                _int(counts.get(split, 0)),
                _int(stats.get("total")),
                _int(stats.get("min")),
                _mean(stats.get("mean")),
                _int(stats.get("p95")),
                _int(stats.get("max")),
                _int(stats.get("answer_total")),
                _cost(stats.get("estimated_cost_per_epoch")),
            ]
        )
    lines += ["  " + line for line in _table(rows, right=set(range(1, 9)))]
    rejected = {k: v for k, v in _mapping(dataset.get("rejected")).items() if v}
    total = sum(v for v in rejected.values() if isinstance(v, int))
    lines += ["", f"  left out      {_int(total)} captures"]
    if rejected:
        width = max(len(reason) for reason in rejected)
        for reason, count in sorted(rejected.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"    {clean(reason).ljust(width)}  {_int(count).rjust(8)}")
    leakage = _mapping(dataset.get("leakage"))
    leak = ", ".join(f"{clean(k).replace('_', ' ')} {_int(v)}" for k, v in leakage.items())
    lines.append(f"  leakage       {leak or '-'}")
    return "\n".join(lines)


def validation_text(file: str, report: JSON) -> str:
    """``datasets validate``: each problem on its line, then the counts."""
    lines = []
    for problem in report.get("problems") or []:
        where = f"line {problem['line']}" if problem.get("line") is not None else "file"
        lines.append(f"{clean(file)}: {where}: {problem['key']}: {clean(problem['message'])}")
    errors = _mapping(report.get("errors"))
    listed = len(report.get("problems") or [])
    unlisted = sum(v for v in errors.values() if isinstance(v, int)) - listed
    if unlisted > 0:
        lines.append(f"… and {unlisted:,} more (counts below; --json for the first ones)")
    verdict = "OK" if report.get("ok") else "FAILED"
    lines.append(
        f"{verdict}: {_int(report.get('examples'))} examples ({report.get('format')}), "
        f"{_int(report.get('invalid_lines'))} with errors"
    )
    for title, counts in (("errors", errors), ("warnings", _mapping(report.get("warnings")))):
        if counts:
            text = ", ".join(f"{clean(k)} {_int(v)}" for k, v in counts.items())
            lines.append(f"  {title}: {text}")
    tokens = _mapping(report.get("tokens"))
    if tokens:
        lines.append(
            f"  tokens: {_int(tokens.get('total'))} in {_int(tokens.get('examples_counted'))} "
            f"examples (min {_int(tokens.get('min'))}, mean {_mean(tokens.get('mean'))}, max "
            f"{_int(tokens.get('max'))}); over {_int(tokens.get('max_tokens'))}: "
            f"{_int(tokens.get('too_long'))}"
        )
    return "\n".join(lines)
