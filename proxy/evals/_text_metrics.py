"""Text-overlap metrics for the ``text_similarity`` grader, in pure Python, each in [0, 1].

* ``chrf``: character n-gram F-score as sacrebleu's ``CHRF()`` defines it (Popović 2015;
  char order 6, word order 0, beta 2, whitespace removed, no eps smoothing), on a 0–1 scale
  instead of sacrebleu's 0–100. Orders that either text is too short for are left out of the
  averages ("effective order").
* ``rouge_l``: ROUGE-L F1 over word tokens, as ``rouge-score`` computes it, except that tokens
  are Unicode ``\\w+`` runs, casefolded, with no stemming (``rouge-score`` keeps only ASCII
  ``[a-z0-9]`` runs, so it scores non-English text as empty).
* ``fuzzy_ratio``: the normalised Indel similarity ``2·LCS / (len(a) + len(b))`` over
  characters, which is ``rapidfuzz.fuzz.ratio / 100`` (and OpenAI's ``fuzzy_match``).
  ``difflib.SequenceMatcher.ratio`` is close but not the same: its matching blocks are not a
  longest common subsequence, and its "autojunk" heuristic distorts texts over 200 characters.

The longest common subsequence is computed bit-parallel (Hyyrö 2004) on Python integers,
O(len(a) · len(b) / 64), so long answers stay cheap.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Sequence

CHRF_ORDER = 6
CHRF_BETA = 2.0
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The word tokens ROUGE-L compares: casefolded Unicode ``\\w+`` runs."""
    return _WORD.findall(text.casefold())


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (bit-parallel)."""
    if len(a) < len(b):
        a, b = b, a  # the longer sequence as the bit vector: fewer big-int steps
    if not b:
        return 0
    masks: dict[Hashable, int] = {}
    for position, item in enumerate(a):
        masks[item] = masks.get(item, 0) | (1 << position)
    everything = (1 << len(a)) - 1
    v = everything
    for item in b:
        u = v & masks.get(item, 0)
        v = ((v + u) | (v - u)) & everything
    return len(a) - v.bit_count()


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of ``candidate`` against ``reference`` (both without tokens: 1.0)."""
    cand, ref = words(candidate), words(reference)
    if not cand and not ref:
        return 1.0
    common = lcs_length(cand, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(cand), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def chrf(
    hypothesis: str, reference: str, *, order: int = CHRF_ORDER, beta: float = CHRF_BETA
) -> float:
    """sacrebleu's sentence-level chrF of ``hypothesis`` against one ``reference``, in [0, 1]."""
    hyp, ref = "".join(hypothesis.split()), "".join(reference.split())
    precision = recall = 0.0
    effective_order = 0
    for n in range(1, order + 1):
        hyp_total, ref_total = len(hyp) - n + 1, len(ref) - n + 1
        if hyp_total <= 0 or ref_total <= 0:
            break  # longer n-grams cannot fit either
        matches = sum((_char_ngrams(hyp, n) & _char_ngrams(ref, n)).values())
        precision += matches / hyp_total
        recall += matches / ref_total
        effective_order += 1
    if effective_order == 0:
        return 0.0
    precision /= effective_order
    recall /= effective_order
    if precision + recall == 0:
        return 0.0
    factor = beta**2
    return (1 + factor) * precision * recall / (factor * precision + recall)


def fuzzy_ratio(a: str, b: str) -> float:
    """Normalised Indel similarity of two strings (``rapidfuzz.fuzz.ratio / 100``)."""
    if not a and not b:
        return 1.0
    return 2 * lcs_length(a, b) / (len(a) + len(b))


def _char_ngrams(text: str, n: int) -> Counter[str]:
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))
