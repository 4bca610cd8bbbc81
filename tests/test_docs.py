"""Docs are part of the product: every setting documented, generated sections fresh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from proxy.settings import env_name, settings_fields

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_the_readme_and_env_example():
    readme = (ROOT / "README.md").read_text()
    env_example = (ROOT / "deploy" / ".env.example").read_text()
    for f in settings_fields():
        assert f"`{env_name(f.name)}`" in readme
        assert f"# {env_name(f.name)}=" in env_example


def test_generated_docs_are_fresh():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "docs.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_quickstart_and_ci_use_the_same_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in readme and "exec scripts/test" in ci
    assert "scripts/bootstrap base && .venv/bin/stillroom serve" in readme
