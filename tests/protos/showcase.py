"""Compiles and imports ``contextiq/testing/v1/showcase.proto`` at test time.

The module is compiled with grpc_tools.protoc into a temporary directory and imported under a
name of its own (``contextiq`` is the generated package in gen/, which has no ``testing``);
importing it registers the file in the default descriptor pool, where the gateway finds the
service. A FileDescriptorSet with source info comes along for the OpenAPI descriptions.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Final

from grpc_tools import protoc  # type: ignore[import-untyped]

_HERE = Path(__file__).resolve().parent
_REPO_PROTOS = _HERE.parent.parent / "proto"
PROTO_FILE: Final = "contextiq/testing/v1/showcase.proto"
MODULE_NAME: Final = "contextiq_testing_showcase_pb2"
SERVICE: Final = "contextiq.testing.v1.Showcase"


@dataclass(frozen=True)
class Showcase:
    """The compiled showcase: its module (message classes) and its descriptor set."""

    module: ModuleType
    descriptor_set: bytes


def compile_showcase(out_dir: Path) -> Showcase:
    """Compiles the showcase into ``out_dir`` and imports it (once per process)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    descriptor_set = out_dir / "showcase.binpb"
    well_known = resources.files("grpc_tools").joinpath("_proto")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{_HERE}",
            f"-I{_REPO_PROTOS}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            "--include_source_info",
            f"--descriptor_set_out={descriptor_set}",
            PROTO_FILE,
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed on {PROTO_FILE}")
    module = sys.modules.get(MODULE_NAME)
    if module is None:
        path = out_dir / PROTO_FILE.replace(".proto", "_pb2.py")
        spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[MODULE_NAME] = module
        spec.loader.exec_module(module)
    return Showcase(module=module, descriptor_set=descriptor_set.read_bytes())
