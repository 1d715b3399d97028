"""farc's command line in the test process (no second torch/TVM import), for the tests that
type what a user types."""

from __future__ import annotations

import os


def farc_cli(*args: object) -> int:
    """Run `farc ARGS...` in this process; its exit status (0 on success). The environment
    is restored afterwards: `--max-memory` sets FARC_MAX_MEMORY for the process (so that
    workers see it), which would otherwise hold for every later test."""
    from farc.cli import main

    saved = dict(os.environ)
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return 0
