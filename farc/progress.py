"""Shared terminal output: one rich progress-bar style and one table style for all commands.

Progress bars and status go to stderr, results (tables) to stdout, so `farc ... > out.txt`
captures the results without the bars. Bars disappear on a non-terminal stderr (CI logs),
where `log` lines are printed instead at the end of each epoch."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

err_console = Console(stderr=True)
PIPED_WIDTH = 200
"""Columns of results written to a file or pipe (rich would assume 80 and cut tables)."""


def out_console() -> Console:
    """The results console on stdout: a terminal's own width; piped or redirected, $COLUMNS
    or PIPED_WIDTH columns, so tables are not squeezed to 80 (and what is still too wide
    wraps: every table column folds, none is cut with "...")."""
    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(width=PIPED_WIDTH)
    return console


def make_progress(disable: bool = False) -> Progress:
    """A progress bar: description, bar, n/total, %, elapsed, ETA and a free `info` field.

    Update the live metrics with `progress.update(task, info="loss 0.12 acc 97.1%")`."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        disable=disable or not err_console.is_terminal,
        transient=False,
    )


def log(message: str) -> None:
    """A status line on stderr (kept out of stdout's results)."""
    err_console.print(message, highlight=False)


def make_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    """A results table; numeric columns (all cells numbers) are right-aligned; a cell too
    wide for the console wraps (folds), it is never cut."""
    rows = [[_fmt(c) for c in r] for r in rows]
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        numeric = bool(rows) and all(_is_number(r[i]) for r in rows)
        table.add_column(col, justify="right" if numeric else "left", overflow="fold")
    for r in rows:
        table.add_row(*r)
    return table


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print a results table on stdout."""
    out_console().print(make_table(title, columns, rows))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _is_number(s: str) -> bool:
    try:
        float(s.rstrip("%"))
    except ValueError:
        return False
    return True
