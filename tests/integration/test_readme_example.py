"""The README's handler example works as written: module, table, call (issue 2.4, item 8)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from support import REPO, free_port, wait_for

from tasker.cli.embedded_services import EmbeddedRedis


def _blocks(language: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Writing handlers"):text.index("## Commands")]
    return re.findall(rf"^```{language}\n(.*?)^```", section, re.S | re.M)


@pytest.mark.timeout(120)
def test_writing_handlers_example(tmp_path: Path, database_url: str) -> None:
    module, call = [b for b in _blocks("python")][:2]
    assert module.startswith("# workers/billing.py")
    sql = _blocks("sh")[0]
    statements = sql[sql.index("<<'SQL'\n") + 8:sql.rindex("SQL")]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS invoices")
        conn.execute(statements)

    root = tmp_path / "app"
    shutil.copytree(REPO / "workers", root / "workers",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "workers" / "billing.py").write_text(module)
    with EmbeddedRedis(tmp_path / "redis") as server:
        env = {**os.environ, "TASKER_BROKER_URL": server.url,
               "TASKER_DATABASE_URL": database_url, "TASKER_METRICS_PORT": str(free_port()),
               "PYTHONPATH": str(root)}
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasker", "worker",
                                   "-c", "1", "--without-mingle", "--without-gossip"],
                                  cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            # The README's calls, as a script would run them (the countdown one is left out).
            script = "\n".join(line for line in call.splitlines() if "countdown" not in line)
            done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr

            def paid() -> bool:
                with psycopg.connect(database_url) as conn:
                    return conn.execute("SELECT paid FROM invoices WHERE id = 42").fetchone()[0]
            wait_for(paid, timeout=60, interval=0.3, message="invoice 42 paid by billing.charge")
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=20)
            log.close()
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("DROP TABLE IF EXISTS invoices")
