"""The `farc` command line. Each command lives in its own module under farc/commands/ and is
imported only when invoked, so `farc --help` stays fast and torch/tvm load only when needed.

Every FarcError (and a few expected OS errors) becomes one line on stderr and exit code 1;
nothing a user can cause prints a traceback (set FARC_DEBUG=1 to see one)."""

from __future__ import annotations

import importlib
import os
import sys

import click

from farc import __version__
from farc.errors import FarcError

# command name -> (module under farc.commands, one-line help). Order is pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "Run the whole pipeline on the embedded digits default."),
    "teacher": ("teacher", "Train a small DeiT teacher on a dataset."),
    "distill": ("distill", "Distil a DeiT teacher into a FAR student."),
    "prune": ("prune", "Hoyer-Square structured pruning of FAR LSTM hidden units."),
    "finetune": ("finetune", "Fine-tune a FAR through its program's crossbar numerics and noise."),
    "import-far": ("import_far", "Import a FAR checkpoint of the paper's reference code."),
    "export": ("export", "Export a DeiT or FAR checkpoint to ONNX."),
    "compile": ("compile", "Compile a checkpoint into a crossbar tile program (.farc)."),
    "run": ("run", "Run a tile program on the functional ReRAM emulator."),
    "verify": ("verify", "Check the emulator against a reference built from the model."),
    "targets": ("targets", "List hardware targets and their key figures."),
    "inspect": ("inspect", "Show how a tile program is tiled onto crossbars."),
    "report": ("report", "Latency, energy and area report of a tile program."),
    "sweep": ("sweep", "Compile, emulate and cost a checkpoint over a grid of target keys."),
}


class LazyGroup(click.Group):
    """A click group that imports a command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (mod, _) in COMMANDS.items() if _module_exists(mod)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not _module_exists(COMMANDS[name][0]):
            return None
        module = importlib.import_module(f"farc.commands.{COMMANDS[name][0]}")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, COMMANDS[n][1]) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _module_exists(mod: str) -> bool:
    from importlib.util import find_spec

    return find_spec(f"farc.commands.{mod}") is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="farc")
@click.option("--max-memory", metavar="SIZE", default=None,
              help="Memory budget for any one input, array or run, e.g. 16G (default 8G, "
                   "or $FARC_MAX_MEMORY; docs/bad-inputs.md).")
def cli(max_memory: str | None) -> None:
    """farc: FAR models (DeiT with attention replaced by BiLSTMs) onto ReRAM crossbars."""
    if max_memory is not None:
        from farc.limits import MEMORY_ENV, parse_size

        parse_size(max_memory, "--max-memory")
        os.environ[MEMORY_ENV] = max_memory  # torchrun workers and subprocesses see it too


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning expected errors into one line and exit code 1."""
    from farc.atomic import install_signal_cleanup

    install_signal_cleanup()  # SIGTERM/SIGHUP: no temp file left beside an output
    try:
        cli.main(args=argv, prog_name="farc", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("farc: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (FarcError, OSError) as exc:
        if os.environ.get("FARC_DEBUG"):
            raise
        click.echo(f"farc: error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # a bug, not bad input: still one line, and a way to see more
        if os.environ.get("FARC_DEBUG"):
            raise
        click.echo(f"farc: internal error: {type(exc).__name__}: {exc} "
                   "(set FARC_DEBUG=1 for the traceback; please report it)", err=True)
        sys.exit(2)
