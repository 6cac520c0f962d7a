"""Every command × an unreachable broker, database or node, and a broken handler module:
one line, no traceback, a distinct exit code (issue 2.4, item 3).

"Unreachable" is a loopback port nobody listens on; the shared services are
never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO, SESSION, free_port

from tasker.errors import EXIT_BROKER, EXIT_DATABASE, EXIT_HANDLERS, EXIT_NODE

CLOSED = free_port()  # bound once and released: nothing listens there
BROKER_DOWN = {"TASKER_BROKER_URL": f"redis://:pw-secret@127.0.0.1:{CLOSED}/0"}
DATABASE_DOWN = {"TASKER_DATABASE_URL": f"postgresql://u:pw-secret@127.0.0.1:{CLOSED}/x"}


def _tasker(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tasker.cli.main", *args], cwd=cwd,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def _assert_one_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    assert "pw-secret" not in out, out
    # The error is one line on stderr (stdout may carry what was done, e.g. the
    # uuid submit recorded); tasker stats reports nodes on stdout, one line each.
    lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
    assert len(lines) == 1, out
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# (command line, environment, exit codes accepted, words the line must contain).
# submit/status belong to tasker/cli/workflow.py, which exits 1 on its own for a
# database it cannot reach; EXIT_DATABASE is the code the other commands use.
FAILING = {
    "load×broker": (("load", "--count", "5", "--quiet", "--queue", f"{SESSION}-down"),
                    BROKER_DOWN, {EXIT_BROKER}, ("broker",)),
    "migrate×database": (("migrate",), DATABASE_DOWN, {EXIT_DATABASE}, ("database",)),
    "stats×node": (("stats", f"127.0.0.1:{CLOSED}"), {}, {EXIT_NODE}, ("unreachable",)),
    "submit×broker": (("submit", "linear.sequence", "--context", '{"n": 1}'),
                      BROKER_DOWN, {EXIT_BROKER}, ("broker",)),
    "submit×database": (("submit", "linear.sequence", "--context", '{"n": 1}'),
                        DATABASE_DOWN, {1, EXIT_DATABASE}, ("database",)),
    "status×database": (("status", "0190f0f0-0000-7000-8000-000000000000"),
                        DATABASE_DOWN, {1, EXIT_DATABASE}, ("database",)),
}


@pytest.mark.parametrize("case", sorted(FAILING))
def test_unreachable_service_is_one_line_and_a_distinct_exit_code(case, database_url):
    argv, env, codes, words = FAILING[case]
    result = _tasker(*argv, env=env, timeout=45)
    assert result.returncode in codes, (result.returncode, result.stdout, result.stderr)
    _assert_one_line(result, *words)


@pytest.mark.parametrize("env", [BROKER_DOWN, DATABASE_DOWN], ids=["broker", "database"])
def test_sample_reports_the_source_down_without_a_traceback(env, database_url):
    # A source that is down is a valid sample (tasker_sample_up 0): exit 0.
    result = _tasker("sample", "--once", env=env, timeout=45)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "Traceback" not in out and "pw-secret" not in out, out


def test_debug_flag_shows_the_traceback():
    result = _tasker("--debug", "load", "--count", "1", "--quiet", env=BROKER_DOWN, timeout=45)
    assert result.returncode == EXIT_BROKER
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("tasker load: broker unreachable")
    assert "pw-secret" not in result.stderr


@pytest.fixture
def broken_handlers(tmp_path: Path) -> Path:
    """A copy of workers/ with a module that does not compile, first on PYTHONPATH."""
    root = tmp_path / "handlers"
    shutil.copytree(REPO / "workers", root / "workers",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "workers" / "broken.py").write_text(
        "from tasker import handler\n\n@handler\ndef charge(x)\n    return x\n")
    return root


def _broken_env(root: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def test_handler_module_syntax_error_in_a_command(broken_handlers, database_url):
    result = _tasker("submit", "linear.sequence", "--context", '{"n": 1}',
                     env=_broken_env(broken_handlers), cwd=broken_handlers)
    assert result.returncode == EXIT_HANDLERS, (result.stdout, result.stderr)
    _assert_one_line(result, "workers/broken.py", "line 4", "SyntaxError")


def test_handler_module_syntax_error_in_the_worker(broken_handlers, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasker", "worker", "-c", "1",
         "-Q", f"{SESSION}-broken", "--without-mingle", "--without-gossip"],
        cwd=broken_handlers, env={**os.environ, **_broken_env(broken_handlers),
                                  "TASKER_METRICS_PORT": "0"},
        capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_HANDLERS, (result.stdout, result.stderr)
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    errors = [line for line in result.stderr.splitlines() if "workers/broken.py" in line]
    assert len(errors) == 1 and "line 4" in errors[0] and "SyntaxError" in errors[0], out
