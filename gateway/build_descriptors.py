"""Builds ``gateway/descriptors.binpb``: the protos' FileDescriptorSet with source info.

The gateway reads proto comments from it for the OpenAPI document (generated ``_pb2`` modules
have none). It is generated, committed, and checked for drift like ``gen/``::

    python -m gateway.build_descriptors                # rewrite gateway/descriptors.binpb
    python -m gateway.build_descriptors --check        # exit 1 when it is out of date

Needs grpcio-tools (a development dependency); the gateway itself only reads the file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
DEFAULT_PROTO_ROOT = _REPO / "proto"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "descriptors.binpb"
# Protos outside contextiq/ whose comments the document uses (Operations, Operation, Status).
_EXTRA_PROTOS = ("google/longrunning/operations.proto", "google/rpc/status.proto")


def proto_files(proto_root: Path) -> list[str]:
    """The protos to describe, relative to the root, in a stable order."""
    ours = sorted(
        p.relative_to(proto_root).as_posix() for p in proto_root.glob("contextiq/**/*.proto")
    )
    return [*ours, *_EXTRA_PROTOS]


def build(proto_root: Path, output: Path) -> None:
    """Runs protoc to write the descriptor set (only the listed files, with source info).

    Raises:
        RuntimeError: protoc failed.
    """
    from grpc_tools import protoc  # type: ignore[import-untyped]  # dev dependency, only here

    well_known = resources.files("grpc_tools").joinpath("_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        "--include_source_info",
        f"--descriptor_set_out={output}",
        *proto_files(proto_root),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--proto-root", type=Path, default=DEFAULT_PROTO_ROOT)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when --out differs from a fresh build"
    )
    args = parser.parse_args(argv)
    if not args.check:
        build(args.proto_root, args.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "descriptors.binpb"
        build(args.proto_root, fresh)
        if not args.out.is_file() or args.out.read_bytes() != fresh.read_bytes():
            print(
                f"{args.out} is out of date: run python -m gateway.build_descriptors",
                file=sys.stderr,
            )
            return 1
    print(f"{args.out} is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
