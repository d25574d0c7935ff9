"""run_until_signal: SIGTERM/SIGINT set the stop event, and only the first one is caught."""

from __future__ import annotations

import asyncio
import signal

import pytest

from ciq_runtime.server import run_until_signal


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_sets_the_stop_event_then_restores_default_handling(
    signum: signal.Signals,
) -> None:
    outcome: list[str] = []

    async def main(stop: asyncio.Event) -> None:
        assert not stop.is_set()
        signal.raise_signal(signum)
        await asyncio.wait_for(stop.wait(), timeout=5)
        # A second signal must not be swallowed by us: a hung shutdown stays interruptible.
        handler = signal.getsignal(signum)
        outcome.append("default" if handler in (signal.SIG_DFL, signal.default_int_handler) else "")

    await run_until_signal(main)
    assert outcome == ["default"]
