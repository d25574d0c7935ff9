"""schemathesis against /openapi.json of the live stack: no 5xx, no schema violation.

It runs over every REST operation of the sessions and memory services (sessions, API keys,
memories, banks, generation, operations, procedural memory; see LIVE_PATHS), with the real
auth interceptor and a JWT for one tenant.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.auth_helpers import make_jwt
from tests.integration.auth.conftest import AuthStack

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
#: REST paths of the services this stack runs (regex over the OpenAPI paths): everything but
#: ExtractionService's, whose service is not part of it (its REST has its own tests).
LIVE_PATHS = r"^/(api/v1/(api-keys|sessions|memories|memory-banks|procedural)|v1/operations)"
#: Never-ending SSE streams (they have their own tests).
EXCLUDED_PATHS = r"(:stream|:watch)$"

pytestmark = pytest.mark.timeout(600)


async def test_schemathesis_finds_no_server_error_or_schema_violation(
    auth_stack: AuthStack, tmp_path: Path
) -> None:
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "run",
        f"{auth_stack.http}/openapi.json",
        "--include-path-regex",
        LIVE_PATHS,
        "--exclude-path-regex",
        EXCLUDED_PATHS,
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_headers_conformance,response_schema_conformance",
        "--max-examples",
        "40",
        # The operation name paths ({name=operations/*}) make hypothesis discard most of the
        # strings it draws; that is the generator's limit, not a finding about the API.
        "--suppress-health-check",
        "filter_too_much",
        "--seed",
        "1",
        "--workers",
        "1",
        "--header",
        f"Authorization: Bearer {make_jwt('fuzz-tenant')}",
        "--report-dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    print(text[-4000:])  # the summary, for the closing note and for failures
    assert process.returncode == 0, text[-6000:]
