"""farc's command line in the test process (no second torch/TVM import), for the tests that
type what a user types."""

from __future__ import annotations


def farc_cli(*args: object) -> int:
    """Run `farc ARGS...` in this process; its exit status (0 on success)."""
    from farc.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
