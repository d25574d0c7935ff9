"""An agent runtime that installs the project imports the generated stubs from anywhere."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.timeout(300)


def test_wheel_ships_the_generated_contracts(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("contextiq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "contextiq/sessions/v1/session_service_pb2.py",
        "contextiq/sessions/v1/session_service_pb2_grpc.py",
        "contextiq/sessions/v1/session_service_pb2.pyi",
        "contextiq/memory/v1/memory_service_pb2.py",
        "contextiq/procedural/v1/procedural_service_pb2_grpc.py",
        "contextiq/extraction/v1/jobs_pb2.py",
        "contextiq/py.typed",
        "ciq_runtime/server.py",
        "sessions_svc/migrations/env.py",
        "sessions_svc/migrations/versions/0001_baseline.py",
    ):
        assert expected in names, expected

    # Install it alone into a target folder and import from a directory outside the repo:
    # the module must come from the installed wheel, not from this checkout.
    target = tmp_path / "site"
    pip_install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    installed = subprocess.run(
        [*pip_install, "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from contextiq.sessions.v1 import session_service_pb2 as pb, session_service_pb2_grpc;"
        "import contextiq;"
        "r = pb.CreateSessionRequest(user_id='123', agent_id='coordinator');"
        "print(contextiq.__file__); print(r.user_id)"
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    ran = subprocess.run(
        [sys.executable, "-c", probe, str(target)],
        cwd=outside,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    module_file, user_id = ran.stdout.split()
    assert module_file.startswith(str(target))
    assert user_id == "123"
