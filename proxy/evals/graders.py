"""Graders: score the student's answer against the teacher's captured answer.

A grader is configured as a JSON object in the shape of OpenAI's grader objects (``type``,
``name`` and the type's own keys) and parsed by ``parse_grader`` (or ``parse_graders`` for an
eval's list, whose names must be unique). A bad config raises ``GraderError`` naming the key.
Every grader takes an optional ``pass_threshold`` in [0, 1], as OpenAI's do.

``grade(sample, reference, request)`` returns a score in [0, 1], or ``None`` when the grader
does not apply to the item (leave it out of that grader's mean). The rules:

=================  ====================================================  =======================
type               score                                                 ``None`` when
=================  ====================================================  =======================
string_check       ``eq``: 1 if the stripped texts are equal; ``ne``:     the teacher's answer
                   1 if not; ``like``: 1 if the student's text contains   has no text (only
                   the teacher's; ``ilike``: the same, casefolded         tool calls)
text_similarity    ``rouge_l``, ``chrf``, ``fuzzy_match`` (see            the teacher's answer
                   ``_text_metrics``) or ``cosine`` (MiniLM embeddings,   has no text
                   clamped to [0, 1]); identical texts 1, no text 0
json_valid         1 if the student's content is a JSON object or array   the teacher's content
                                                                          is empty, or neither
                                                                          JSON nor asked for
                                                                          (``response_format``)
json_schema        1 if the student's content is JSON that validates      the teacher's content
                   against ``schema`` (else the request's                 is empty, or there is
                   ``response_format.json_schema.schema``)                no usable schema
tool_call_match    matched calls / max(teacher's calls, student's         neither side made a
                   calls); calls match by name (``name_only``) or by      tool call (teacher
                   name and parsed arguments (``exact``, the default),    none, student some:
                   in any order (parallel calls are a multiset)           0)
score_model        run by ``proxy.evals.judge`` (``needs_judge``), not    always
                   by ``grade()``
=================  ====================================================  =======================

"Text" is the message's content (its text parts joined), or its refusal when it has no
content. Tool-call arguments are compared as parsed JSON, so key order and spacing never
matter, ``true`` never equals ``1``, ``1`` equals ``1.0``, and empty arguments mean ``{}``;
arguments that are not JSON compare as stripped text.

JSON schemas are checked with jsonschema-rs (a base dependency, already the dataset builder's
``response_format`` gate): full Draft 2020-12 rather than a hand-written subset, remote
``$ref`` never fetched, compiled validators cached per schema. A request schema that cannot be
compiled cannot judge the answer (``None``); a configured one is refused by ``parse_grader``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

from proxy.errors import InvalidRequest
from proxy.evals import _json, _text_metrics
from proxy.evals.answer import Answer, ToolCall
from proxy.types import JSONObject

__all__ = [
    "Answer",
    "ArgumentsMatch",
    "Grader",
    "GraderError",
    "JsonSchema",
    "JsonValid",
    "ScoreModel",
    "SimilarityMetric",
    "StringCheck",
    "StringOperation",
    "TextSimilarity",
    "ToolCall",
    "ToolCallMatch",
    "parse_grader",
    "parse_graders",
]

StringOperation = Literal["eq", "ne", "like", "ilike"]
SimilarityMetric = Literal["rouge_l", "chrf", "fuzzy_match", "cosine"]
ArgumentsMatch = Literal["exact", "name_only"]

_MAX_NAME = 128


class GraderError(InvalidRequest):
    """A grader or threshold config that cannot be used (``param`` names the key), or a
    grader that cannot run here (the ``eval`` extra is missing)."""

    code = "invalid_grader"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param=param)


@dataclass(frozen=True, slots=True, kw_only=True)
class Grader:
    """A parsed grader config. ``type`` is OpenAI's name for it; ``needs_judge`` marks the
    ``score_model`` grader, which the runner sends to ``proxy.evals.judge`` instead."""

    type: ClassVar[str]
    needs_judge: ClassVar[bool] = False
    name: str
    pass_threshold: float | None = None

    def grade(
        self, sample: Answer, reference: Answer, request: JSONObject | None = None
    ) -> float | None:
        """The student's ``sample`` scored against the teacher's ``reference`` in [0, 1], or
        ``None`` when the grader does not apply; ``request`` is the teacher's request body."""
        raise NotImplementedError(f"{self.type} graders are run by proxy.evals.judge")

    def grade_batch(
        self,
        pairs: Sequence[tuple[Answer, Answer]],
        requests: Sequence[JSONObject | None] | None = None,
    ) -> list[float | None]:
        """``grade`` over (sample, reference) pairs; cosine embeds them in one batch."""
        contexts = requests if requests is not None else [None] * len(pairs)
        return [self.grade(s, r, q) for (s, r), q in zip(pairs, contexts, strict=True)]

    def is_pass(self, score: float) -> bool | None:
        """``score >= pass_threshold``, or ``None`` without a threshold."""
        return None if self.pass_threshold is None else score >= self.pass_threshold

    def to_json(self) -> JSONObject:
        """The config with its defaults filled in (keys left unset are omitted)."""
        out: JSONObject = {"type": self.type}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is not None:
                out[spec.name] = value
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class StringCheck(Grader):
    type: ClassVar[str] = "string_check"
    operation: StringOperation

    def grade(
        self, sample: Answer, reference: Answer, request: JSONObject | None = None
    ) -> float | None:
        expected = reference.output_text.strip()
        if not expected:
            return None
        got = sample.output_text.strip()
        if self.operation == "eq":
            return float(got == expected)
        if self.operation == "ne":
            return float(got != expected)
        if self.operation == "like":
            return float(expected in got)
        return float(expected.casefold() in got.casefold())


@dataclass(frozen=True, slots=True, kw_only=True)
class TextSimilarity(Grader):
    type: ClassVar[str] = "text_similarity"
    evaluation_metric: SimilarityMetric

    def grade(
        self, sample: Answer, reference: Answer, request: JSONObject | None = None
    ) -> float | None:
        return self.grade_batch([(sample, reference)])[0]

    def grade_batch(
        self,
        pairs: Sequence[tuple[Answer, Answer]],
        requests: Sequence[JSONObject | None] | None = None,
    ) -> list[float | None]:
        scores: list[float | None] = []
        to_embed: list[tuple[int, str, str]] = []
        for got_answer, expected_answer in pairs:
            got, expected = got_answer.output_text.strip(), expected_answer.output_text.strip()
            if not expected:
                scores.append(None)
            elif got == expected or not got:
                scores.append(float(got == expected))
            elif self.evaluation_metric == "cosine":
                to_embed.append((len(scores), got, expected))
                scores.append(None)
            else:
                scores.append(_SIMILARITY[self.evaluation_metric](got, expected))
        if to_embed:
            from proxy.evals.embeddings import embed

            vectors = embed([text for _, got, expected in to_embed for text in (got, expected)])
            for k, (index, _, _) in enumerate(to_embed):
                cosine = sum(x * y for x, y in zip(vectors[2 * k], vectors[2 * k + 1], strict=True))
                scores[index] = min(1.0, max(0.0, cosine))
        return scores


_SIMILARITY: dict[str, Callable[[str, str], float]] = {
    "rouge_l": _text_metrics.rouge_l,
    "chrf": _text_metrics.chrf,
    "fuzzy_match": _text_metrics.fuzzy_ratio,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonValid(Grader):
    type: ClassVar[str] = "json_valid"

    def grade(
        self, sample: Answer, reference: Answer, request: JSONObject | None = None
    ) -> float | None:
        expected = reference.content
        if not expected or not expected.strip():
            return None
        if not _json.is_json_document(expected) and not _json.asks_for_json(request):
            return None
        return float(_json.is_json_document(sample.content))


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonSchema(Grader):
    type: ClassVar[str] = "json_schema"
    schema: JSONObject | None = None  # else the request's response_format schema

    def grade(
        self, sample: Answer, reference: Answer, request: JSONObject | None = None
    ) -> float | None:
        if not reference.content or not reference.content.strip():
            return None
        schema = self.schema if self.schema is not None else _json.request_schema(request)
        validator = None if schema is None else _json.validator(_json.canonical(schema))
        if validator is None:
            return None
        value = _json.loads(sample.content)
        return float(value is not _json.NOT_JSON and validator.is_valid(value))


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallMatch(Grader):
    type: ClassVar[str] = "tool_call_match"
    arguments: ArgumentsMatch = "exact"

    def grade(
        self, sample: Answer, reference: Answer, request: JSONObject | None = None
    ) -> float | None:
        expected, got = reference.tool_calls, sample.tool_calls
        if not expected:
            return None if not got else 0.0
        unused = [self._key(call) for call in got]
        matched = 0
        for call in expected:
            key = self._key(call)
            if key in unused:  # equality is transitive, so greedy matching is maximal
                unused.remove(key)
                matched += 1
        return matched / max(len(expected), len(got))

    def _key(self, call: ToolCall) -> object:
        if self.arguments == "name_only":
            return call.name
        arguments = call.arguments.strip() or "{}"
        return (call.name, _json.frozen(_json.loads(arguments), arguments))


@dataclass(frozen=True, slots=True, kw_only=True)
class ScoreModel(Grader):
    """The pairwise judge (``proxy.evals.judge``): ``model`` answers through the proxy."""

    type: ClassVar[str] = "score_model"
    needs_judge: ClassVar[bool] = True
    model: str
    judge: Literal["pairwise"] = "pairwise"
    rubric: str | None = None  # what the judge should weigh, added to its prompt
    sampling_params: JSONObject | None = None  # passed to the judge's request as they are


_TYPES: dict[str, type[Grader]] = {
    cls.type: cls
    for cls in (StringCheck, TextSimilarity, JsonValid, JsonSchema, ToolCallMatch, ScoreModel)
}
_KEYS: dict[str, tuple[str, ...]] = {
    "string_check": ("operation",),
    "text_similarity": ("evaluation_metric",),
    "json_valid": (),
    "json_schema": ("schema",),
    "tool_call_match": ("arguments",),
    "score_model": ("model", "judge", "rubric", "sampling_params"),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "operation": ("eq", "ne", "like", "ilike"),
    "evaluation_metric": ("rouge_l", "chrf", "fuzzy_match", "cosine"),
    "arguments": ("exact", "name_only"),
    "judge": ("pairwise",),
}
_REQUIRED_CHOICES = ("operation", "evaluation_metric")  # the others have defaults


def parse_grader(obj: object) -> Grader:
    """The grader a JSON config describes; ``GraderError`` (with ``param``) when it is bad."""
    if not isinstance(obj, dict):
        raise GraderError("a grader must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in _TYPES:  # a list or object is unhashable
        known = ", ".join(_TYPES)
        raise GraderError(f"unknown grader type {kind!r} (one of: {known})", "type")
    allowed = (
        "type",
        "name",
        *_KEYS[kind],
        *(() if kind == "score_model" else ("pass_threshold",)),
    )
    for key in obj:
        if key not in allowed:
            raise GraderError(
                f"unknown key {key!r} in a {kind} grader (allowed: {', '.join(allowed)})", key
            )
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME:
        raise GraderError(
            f"name must be a non-empty string of at most {_MAX_NAME} characters", "name"
        )
    options: dict[str, Any] = {"name": name}
    threshold = obj.get("pass_threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise GraderError("pass_threshold must be a number", "pass_threshold")
        if not 0 <= threshold <= 1:
            raise GraderError("pass_threshold must be between 0 and 1", "pass_threshold")
        options["pass_threshold"] = float(threshold)
    for key in _KEYS[kind]:
        if key in _CHOICES and (key in obj or key in _REQUIRED_CHOICES):
            options[key] = _choice(obj, key)
    if kind == "text_similarity" and options["evaluation_metric"] == "cosine":
        from proxy.evals.embeddings import check_available

        check_available()
    if kind == "json_schema" and "schema" in obj:
        options["schema"] = _checked_schema(obj["schema"])
    if kind == "score_model":
        options.update(_judge_options(obj))
    return _TYPES[kind](**options)


def parse_graders(objs: object, *, param: str = "graders") -> list[Grader]:
    """An eval's graders: a non-empty list with unique names. ``param`` prefixes the key
    named by each ``GraderError`` (``graders[2].operation``)."""
    if not isinstance(objs, list) or not objs:
        raise GraderError("graders must be a non-empty list of grader objects", param)
    graders: list[Grader] = []
    names: set[str] = set()
    for index, obj in enumerate(objs):
        where = f"{param}[{index}]"
        try:
            grader = parse_grader(obj)
        except GraderError as exc:
            raise GraderError(exc.message, f"{where}.{exc.param}" if exc.param else where) from None
        if grader.name in names:
            raise GraderError(f"grader name {grader.name!r} is used twice", f"{where}.name")
        names.add(grader.name)
        graders.append(grader)
    return graders


def _choice(obj: Mapping[str, object], key: str) -> str:
    value = obj.get(key)
    choices = _CHOICES[key]
    if value not in choices:
        raise GraderError(f"{key} must be one of {', '.join(choices)} (got {value!r})", key)
    return value


def _checked_schema(schema: object) -> JSONObject:
    if not isinstance(schema, dict):
        raise GraderError("schema must be a JSON schema object", "schema")
    error = _json.schema_error(schema)
    if error is not None:
        raise GraderError(f"schema is not a usable JSON schema: {error}", "schema")
    return schema


def _judge_options(obj: Mapping[str, object]) -> dict[str, object]:
    model = obj.get("model")
    if not isinstance(model, str) or not model.strip():
        raise GraderError("model must name the judge model (a non-empty string)", "model")
    options: dict[str, object] = {"model": model}
    rubric = obj.get("rubric")
    if rubric is not None:
        if not isinstance(rubric, str):
            raise GraderError("rubric must be a string", "rubric")
        options["rubric"] = rubric
    params = obj.get("sampling_params")
    if params is not None:
        if not isinstance(params, dict):
            raise GraderError("sampling_params must be a JSON object", "sampling_params")
        options["sampling_params"] = params
    return options
