"""The `stillroom` command: help for everything, clear startup errors, graceful stop (SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import click
import httpx
import pytest
from click.testing import CliRunner

from proxy.cli import STARTUP_FAILURE, cli
from proxy.settings import settings_fields

STILLROOM = [sys.executable, "-m", "proxy"]


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


def test_every_command_and_option_has_help():
    runner = CliRunner()
    for path, command in all_commands(cli):
        assert command.help, path
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, path
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, (path, param.name)


def test_serve_has_one_flag_per_setting_showing_its_env_name():
    result = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200)
    for f in settings_fields():
        assert "--" + f.name.replace("_", "-") in result.output
        assert "STILLROOM_" + f.name.upper() in result.output


def test_bad_settings_stop_the_start_with_one_line_each():
    result = CliRunner().invoke(
        cli,
        ["serve", "--port", "http", "--upstream", "nowhere"],
        env={"STILLROOM_IDLE_TIMEOUT": "0"},
    )
    assert result.exit_code == STARTUP_FAILURE
    lines = result.output.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("Error: ") for line in lines)
    assert "Traceback" not in result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not come up")


@pytest.fixture
def served(mock_url, tmp_path):
    """A real `stillroom serve` process with a 2 s drain window."""
    port = free_port()
    env = {
        **os.environ,
        "STILLROOM_UPSTREAM": mock_url,
        "STILLROOM_DRAIN_SECONDS": "2",
        "STILLROOM_DATABASE": str(tmp_path / "served.db"),
    }
    proc = subprocess.Popen(
        [*STILLROOM, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz")
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()


def stream_in_thread(base: str, headers: dict[str, str], out: dict) -> threading.Thread:
    def run() -> None:
        try:
            with httpx.stream(
                "POST",
                base + "/v1/chat/completions",
                json={
                    "model": "m",
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": True,
                },
                headers=headers,
                timeout=30,
            ) as r:
                out["first"] = True
                out["body"] = b"".join(r.iter_raw())
        except httpx.HTTPError as exc:
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_sigterm_lets_in_flight_streams_finish_and_exits_zero(served):
    proc, base = served
    result: dict = {}
    thread = stream_in_thread(base, {"x-mock-gap-ms": "50", "x-mock-chunks": "20"}, result)
    deadline = time.monotonic() + 10
    while "first" not in result and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.TransportError):
        httpx.get(base + "/healthz", timeout=1)  # no longer accepting
    thread.join(15)
    assert proc.wait(15) == 0
    assert "error" not in result, result.get("error")
    assert result["body"].endswith(b"data: [DONE]\n\n")
    output = proc.stdout.read().decode()
    assert "Traceback" not in output


def test_streams_longer_than_the_drain_window_are_cut(served):
    proc, base = served
    result: dict = {}
    thread = stream_in_thread(base, {"x-mock-gap-ms": "100", "x-mock-chunks": "100"}, result)
    deadline = time.monotonic() + 10
    while "first" not in result and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert time.monotonic() - started < 2 + 2
    thread.join(15)
    assert "error" in result  # cut, not completed: the client sees a broken stream
    output = proc.stdout.read().decode()
    assert "Traceback" not in output


def test_db_migrate_and_status(tmp_path):
    db = str(tmp_path / "cli.db")
    runner = CliRunner()
    before = runner.invoke(cli, ["db", "status", "--database", db, "--json"])
    assert before.exit_code == 1
    assert json.loads(before.output)["pending"][0].startswith("m001")
    applied = runner.invoke(cli, ["db", "migrate", "--database", db])
    assert applied.exit_code == 0 and "applied m001_captures" in applied.output
    again = runner.invoke(cli, ["db", "migrate", "--database", db])
    assert again.output.strip() == "up to date"
    after = runner.invoke(cli, ["db", "status"], env={"STILLROOM_DATABASE": db})
    assert after.exit_code == 0
    assert "pending migrations: none" in after.output and "captures: 0" in after.output


def test_db_commands_fail_with_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["db", "status", "--database", "postgresql://x/y"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: postgresql://x/y: ")
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_serve_on_a_taken_port_exits_with_startup_failure(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*STILLROOM, "serve", "--port", str(port), "--database", str(tmp_path / "p.db")],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == STARTUP_FAILURE
    assert "Traceback" not in result.stderr + result.stdout
