"""`farc targets [NAME|FILE.toml]`: the shipped hardware targets with their key figures, or
one target in detail (every key, its meaning and its cited source)."""

from __future__ import annotations

import click


@click.command("targets")
@click.argument("name", required=False)
def command(name: str | None) -> None:
    """List hardware targets, or show target NAME (or a .toml file) in detail."""
    from pathlib import Path

    from rich.console import Console

    from farc.report.targets_view import target_detail, targets_table
    from farc.targets import load_target

    console = Console()
    if name is None:
        console.print(targets_table())
        return
    target = load_target(name)
    path = Path(name) if name.endswith(".toml") else None
    console.print(f"[bold]{target.name}[/bold]: {target.description}")
    for table in target_detail(target, path):
        console.print(table)
