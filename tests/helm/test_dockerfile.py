"""The Dockerfile (no Docker engine here) kept in step with `make setup`, pyproject and the
chart: same install steps, same Python, every package in the build context, the chart's
ports, user and commands."""

from __future__ import annotations

import fnmatch
import importlib
import re
import shlex
import tomllib

import pytest

from tests.helm.conftest import CHART, REPO, load_yaml

DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VALUES = load_yaml((CHART / "values.yaml").read_text())
# pip options that change nothing about what gets installed.
NOISE = {"--quiet", "-q", "--disable-pip-version-check"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def pip_installs(commands: list[str]) -> list[frozenset[str]]:
    """The arguments of each `pip install` in some shell commands, without noise options."""
    installs = []
    for command in commands:
        for part in re.split(r"&&|;", command):
            words = shlex.split(part)
            if "pip" in words and words[words.index("pip") + 1 : words.index("pip") + 2] == [
                "install"
            ]:
                args = words[words.index("pip") + 2 :]
                installs.append(frozenset(a for a in args if a not in NOISE))
    return installs


def makefile_setup_commands() -> list[str]:
    makefile = (REPO / "Makefile").read_text()
    match = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert match, "the Makefile's $(STAMP) rule (make setup) is gone"
    return [line.strip().replace("$(PY)", "python") for line in match.group(1).splitlines()]


def test_dockerfile_installs_what_make_setup_installs_in_the_same_order() -> None:
    make = pip_installs(makefile_setup_commands())
    docker = pip_installs([args for keyword, args in instructions() if keyword == "RUN"])
    # The image installs the project itself, not in editable mode; all else is identical.
    expected = [args - {"-e"} for args in make]
    assert docker == expected
    assert expected[0] == {"-r", "requirements.lock"}


def test_base_image_is_the_python_pyproject_requires() -> None:
    (base,) = {
        m.group(1)
        for m in re.finditer(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)-slim$", DOCKERFILE, re.M)
    }
    requires = PYPROJECT["project"]["requires-python"]
    assert requires == f">={base},<3.{int(base.split('.')[1]) + 1}"
    froms = [args for keyword, args in instructions() if keyword == "FROM"]
    assert froms
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)


def test_image_user_and_ports_match_the_chart() -> None:
    steps = instructions()
    (user,) = [args for keyword, args in steps if keyword == "USER"]
    uid, gid = (int(x) for x in user.split(":"))
    for context in (VALUES["podSecurityContext"], VALUES["securityContext"]):
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)
        assert context["runAsNonRoot"] is True
    assert uid != 0
    (expose,) = [args for keyword, args in steps if keyword == "EXPOSE"]
    ports = VALUES["containerPorts"]
    assert sorted(int(p) for p in expose.split()) == sorted(ports.values())


def test_build_context_holds_every_package_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore is an allow-list"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {
        word.rstrip("/")
        for keyword, args in instructions()
        if keyword == "COPY" and not args.startswith("--from")
        for word in args.split()[:-1]
    }
    needed = {"requirements.lock", "pyproject.toml", PYPROJECT["project"]["readme"]}
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for root in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"]:
        if root == ".":
            needed |= {p.rstrip("*") for p in include if (REPO / p.rstrip("*")).is_dir()}
        else:
            needed.add(root)
    assert needed <= allowed, needed - allowed
    assert needed <= copied, needed - copied
    for secret_prone in (".venv", ".git", ".contextiq", ".tools", "tests"):
        assert not any(fnmatch.fnmatch(secret_prone, p) for p in allowed), secret_prone


@pytest.mark.parametrize(
    "module",
    ["sessions_svc", "memory_svc", "extraction_svc", "gateway", "ciq_runtime.migrate"],
)
def test_the_commands_the_chart_runs_exist(module: str) -> None:
    path = REPO / module.replace(".", "/")
    assert (path / "__main__.py").is_file() or path.with_suffix(".py").is_file()
    template_text = "".join(p.read_text() for p in (CHART / "templates").glob("*.yaml"))
    assert f'"{module}"' in template_text


def test_default_command_is_the_gateway() -> None:
    (cmd,) = [args for keyword, args in instructions() if keyword == "CMD"]
    assert cmd == '["python", "-m", "gateway"]'


@pytest.mark.parametrize(
    ("module", "service"),
    [
        ("contextiq.sessions.v1.session_service_pb2", "contextiq.sessions.v1.SessionService"),
        ("contextiq.memory.v1.memory_service_pb2", "contextiq.memory.v1.MemoryService"),
        (
            "contextiq.extraction.v1.extraction_service_pb2",
            "contextiq.extraction.v1.ExtractionService",
        ),
    ],
)
def test_probed_health_names_are_real_services(module: str, service: str) -> None:
    descriptor = importlib.import_module(module).DESCRIPTOR
    assert service.rsplit(".", 1)[1] in descriptor.services_by_name
    assert descriptor.package == service.rsplit(".", 1)[0]
    template = (CHART / "templates" / f"{service.split('.')[1]}-deployment.yaml").read_text()
    assert f'"{service}"' in template
