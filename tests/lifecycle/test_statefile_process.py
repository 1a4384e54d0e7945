"""The state file with the real CLI in a child process: a demo exporter stopped with SIGTERM
and started again keeps its month's token dollars; an unwritable state directory stops the
start with exit status 2 and the field named."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import yaml

from tests.lifecycle.proc import Exporter, assert_clean_stderr, start_exporter
from tests.lifecycle.test_process import sample


def _chatbot_token_mtd(exporter: Exporter) -> float:
    """The demo's chatbot ``tokens`` budget's spend: its token dollars this month, unrounded."""
    resp = exporter.get("/metrics")
    assert resp.status_code == 200
    value = sample(resp.text, "aifinops_tenant_token_budget_spend_usd", tenant="chatbot")
    return 0.0 if value is None else value


def _chargeback_tokens(exporter: Exporter) -> float:
    resp = exporter.get("/api/v1/chargeback")
    assert resp.status_code == 200, resp.text
    return sum(r["amount_usd"] for r in resp.json()["rows"] if r["resource"] == "tokens")


def test_sigterm_and_restart_keep_the_months_token_dollars(tmp_path: Path) -> None:
    state = tmp_path / "state" / "state.json"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"state": {"path": str(state), "save_interval_seconds": 1}}))

    first = start_exporter(tmp_path, "--demo", "--config", str(config))
    try:
        first.wait_until("/readyz", 200)
        # The first refresh is the counters' baseline; the next one (10 s later) counts.
        deadline = time.monotonic() + 60
        before = 0.0
        while before <= 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            before = _chatbot_token_mtd(first)
        assert before > 0
        ledger_before = _chargeback_tokens(first)
        first.signal(signal.SIGTERM)
        assert first.proc.wait(timeout=30) == 0
        assert_clean_stderr(first.stderr())
    finally:
        first.stop()
    saved = json.loads(state.read_bytes())
    assert saved["format"] == "aifinops-state" and saved["payload"]["finance"]["periods"]

    second = start_exporter(tmp_path, "--demo", "--config", str(config))
    try:
        second.wait_until("/readyz", 200)
        # Not reset: what was counted before the stop is still there, plus what the demo's
        # fake LiteLLM (restarted too: its counters came back lower, counted from zero)
        # counted since. A start without the file would show 0 (a baseline refresh).
        assert _chatbot_token_mtd(second) >= before
        assert _chargeback_tokens(second) >= ledger_before
        stderr = second.stderr()
        assert '"event": "state_restored"' in stderr
        assert_clean_stderr(stderr)
    finally:
        second.stop()


def test_unwritable_state_directory_exits_2_naming_the_field(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"state": {"path": str(blocker / "state.json")}, "allow_no_sources": True})
    )
    exporter = start_exporter(tmp_path, "--config", str(config))
    try:
        assert exporter.proc.wait(timeout=60) == 2
    finally:
        exporter.stop()
    err = exporter.stderr()
    assert "state.path: cannot write in" in err and "not-a-directory" in err
    assert "Traceback" not in err
    # --check-config validates the text only: the file may run elsewhere
    checker = start_exporter(tmp_path, "--config", str(config), "--check-config")
    try:
        assert checker.proc.wait(timeout=60) == 0
    finally:
        checker.stop()
