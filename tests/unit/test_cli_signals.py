"""`bandit-stream`: a SIGTERM ends a command as Ctrl-C does, running its clean-up."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.unit

# A command whose handler blocks until signalled; its `finally` stands for what a real
# command stops on the way out (local services, workers, scratch topics).
_BLOCKING_COMMAND = textwrap.dedent(
    """
    import argparse, sys, time
    from streams.cli import main as cli

    def handler(args, settings):
        try:
            print("started", flush=True)
            time.sleep(60)
            return 0
        finally:
            print("cleaned up", flush=True)

    def parser():
        p = argparse.ArgumentParser()
        p.add_argument("command")
        p.set_defaults(handler=handler)
        return p

    cli.build_parser = parser
    sys.exit(cli.main([sys.argv[1]]))
    """
)


@pytest.mark.parametrize(("command", "cleaned"), [("demo", True), ("worker", False)])
def test_sigterm_runs_the_commands_clean_up(command: str, cleaned: bool) -> None:
    """Every command but `worker` (faust owns its signals) turns SIGTERM into Ctrl-C."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _BLOCKING_COMMAND, command],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"  # blocks until the handler runs
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    if cleaned:
        assert (proc.returncode, out.strip()) == (130, "cleaned up")
    else:  # Python's default: killed by the signal, no clean-up
        assert (proc.returncode, out.strip()) == (-signal.SIGTERM, "")
