from __future__ import annotations

import shlex

import pytest

from consumer.sandbox import foreground


@pytest.mark.parametrize(
    "registry_url, has_registry",
    [
        pytest.param(None, False, id="plain"),
        pytest.param("http://127.0.0.1:18081", True, id="with-registry"),
    ],
)
def test_export_line_round_trips_through_a_shell(
    registry_url: str | None, has_registry: bool
) -> None:
    env = foreground.environment(
        bootstrap="127.0.0.1:19092", api_url="http://127.0.0.1:18080", registry_url=registry_url
    )
    words = shlex.split(foreground.export_line(env))
    assert words[0] == "export"
    assert dict(w.split("=", 1) for w in words[1:]) == env
    assert ("SCHEMA_REGISTRY_URL" in env) is has_registry
    assert env["METRICS_HOST"] == "127.0.0.1"


def test_help_shows_an_example_exit_codes_and_the_fixed_ports(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        foreground.main(["--help"])
    out = capsys.readouterr().out
    assert "  metadata-consumer sandbox\n" in out
    assert "exit codes:" in out
    assert "19092" in out and "18080" in out


@pytest.mark.parametrize(
    "args, phrase",
    [
        pytest.param(["--faults", "{not json"], "--faults", id="bad-faults-json"),
        pytest.param(
            ["--api-port", "70000"], "--api-port=70000 is not a TCP port", id="port-range"
        ),
        pytest.param(["--api-port", "19092"], "must differ", id="same-ports"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(
    args: list[str], phrase: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert foreground.main(args) == 2
    assert phrase in capsys.readouterr().err
