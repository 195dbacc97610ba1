"""The ``metadata-consumer`` command line: ``run`` with bad configuration gives a clear message
naming the variable and exit status 2 (a crash loop would restart forever), never the secret in
the output; the parser accepts every documented command and rejects unknown ones."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from consumer.cli import DLQ_REASONS, main, parser
from consumer.sandbox.broker import free_port
from consumer.service import run_from_environment

SECRET = "s3cr3t-value-never-printed"
BASE = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    "ASAPP_API_ID": "app",
    "ASAPP_API_SECRET": SECRET,
    "LOG_FORMAT": "text",
}


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "ASAPP_", "TOPIC_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "consumer", "run"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        pytest.param({"KAFKA_BOOTSTRAP_SERVERS": ""}, "KAFKA_BOOTSTRAP_SERVERS", id="no-brokers"),
        pytest.param({"ASAPP_API_SECRET": ""}, "ASAPP_API_SECRET", id="no-secret"),
        pytest.param({"BATCH_MAX_ITEMS": "1001"}, "BATCH_MAX_ITEMS", id="over-api-max"),
        pytest.param({"RATE_LIMIT_RPS": "fast"}, "RATE_LIMIT_RPS", id="not-a-number"),
        pytest.param({"ASAPP_API_BASE_URL": "api.asapp.com"}, "ASAPP_API_BASE_URL", id="not-a-url"),
        pytest.param(
            {"KAFKA_ENABLE_AUTO_COMMIT": "true"}, "KAFKA_ENABLE_AUTO_COMMIT", id="reserved"
        ),
        pytest.param({"KAFKA_NO_SUCH_THING": "1"}, "KAFKA_NO_SUCH_THING", id="unknown-kafka-prop"),
        pytest.param(
            {"KAFKA_GROUP_PROTOCOL": "consumer", "KAFKA_SESSION_TIMEOUT_MS": "6000"},
            "KAFKA_SESSION_TIMEOUT_MS",
            id="kip848-with-classic-property",
        ),
        pytest.param(
            {"TOPIC_AGENT": "", "TOPIC_CONVERSATION": "", "TOPIC_CUSTOMER": ""},
            "TOPIC_AGENT",
            id="no-topics",
        ),
    ],
)
def test_bad_configuration_exits_2_naming_the_variable(change: dict[str, str], named: str) -> None:
    result = run({**BASE, "METRICS_PORT": str(free_port()), **change})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert named in output
    assert "Traceback" not in output
    assert SECRET not in output


def test_metrics_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        result = run({**BASE, "METRICS_PORT": str(taken.getsockname()[1])})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "cannot start" in output and "Traceback" not in output
    assert SECRET not in output


def test_run_in_process_with_bad_configuration_returns_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_from_environment({**BASE, "KAFKA_BOOTSTRAP_SERVERS": ""}) == 2
    err = capsys.readouterr().err
    assert err.startswith("metadata-consumer: configuration error: ")
    assert "KAFKA_BOOTSTRAP_SERVERS" in err and SECRET not in err


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        pytest.param(["run"], "run", id="run"),
        pytest.param(["demo", "--events", "10"], "demo", id="demo"),
        pytest.param(["dlq", "replay", "--reason", "consume", "--execute"], "dlq", id="replay"),
    ],
)
def test_parser_accepts_the_documented_commands(argv: list[str], command: str) -> None:
    assert parser().parse_args(argv).command == command


def test_replay_can_select_consumer_error_dead_letters() -> None:
    assert "consume" in DLQ_REASONS
    assert parser().parse_args(["dlq", "replay", "--reason", "consume"]).reason == "consume"


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["serve"], id="unknown-command"),
        pytest.param(["dlq"], id="dlq-without-subcommand"),
        pytest.param(["dlq", "replay", "--reason", "nope"], id="unknown-reason"),
    ],
)
def test_bad_command_line_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "usage: metadata-consumer" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from consumer import __version__

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"metadata-consumer {__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="top"),
        pytest.param(["run"], id="run"),
        pytest.param(["check"], id="check"),
        pytest.param(["demo"], id="demo"),
        pytest.param(["dlq"], id="dlq"),
        pytest.param(["dlq", "inspect"], id="dlq-inspect"),
        pytest.param(["dlq", "replay"], id="dlq-replay"),
    ],
)
def test_every_help_has_an_example_and_exit_codes(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    examples = out.partition("examples:\n")[2]
    assert "  metadata-consumer " in examples.partition("exit codes:")[0]
    assert "exit codes:\n  " in out


def test_run_help_lists_every_variable_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    from consumer.settings import ENV_VARS

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    lines = {
        line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and line.split()
    }
    for name in ENV_VARS:
        assert name in lines, name
    assert lines["BATCH_MAX_ITEMS"].split()[1] == "1000"
    assert lines["ASAPP_API_SECRET"].split()[1] == "(required)"
    assert "README.md" in out


def test_check_help_says_it_costs_one_request(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "sends ONE request to the API" in out and "--no-api-call" in out


def test_run_warns_about_look_alike_variables_and_a_rate_above_the_spike_arrest() -> None:
    import socket

    with socket.socket() as taken:  # stop right after the warnings: the port is busy
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run(
            {**BASE, "BATCH_MAX_ITEM": "5", "RATE_LIMIT_RPS": "500", "METRICS_PORT": str(port)}
        )
    output = result.stdout + result.stderr
    assert "did you mean BATCH_MAX_ITEMS?" in output
    assert "RATE_LIMIT_RPS=500 is above ASAPP's spike arrest of 100 requests/s" in output
    assert f"METRICS_PORT={port} is already in use" in output
    assert result.returncode == 2 and "Traceback" not in output


def test_run_reports_every_configuration_problem_at_once() -> None:
    result = run({"LOG_FORMAT": "text", "BATCH_MAX_ITEMS": "many"})
    assert result.returncode == 2
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "ASAPP_API_ID", "ASAPP_API_SECRET", "BATCH_MAX_ITEMS"):
        assert name in result.stderr
    assert "4 problems:" in result.stderr
