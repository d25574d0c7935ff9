"""``make bench``: run every benchmark in bench/ and print its numbers.

Each benchmark is a module with a ``main()`` that prints its own figures; they run one after
the other so they do not compete for the two cores.
"""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = [
    "bench.gateway_overhead",
    "bench.sessions_bench",
    "bench.memory_locomo",
    "bench.memory_scale",
    "bench.procedural_search",
    "bench.generation",
]


def main(argv: list[str]) -> int:
    """Run the benchmarks named on the command line, or all of them."""
    selected = [f"bench.{name}" for name in argv] or BENCHMARKS
    for name in selected:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        importlib.import_module(name).main()
        print(f"== {name} done in {time.perf_counter() - started:.1f}s\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
