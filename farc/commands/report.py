"""`farc report MODEL.farc [--html report.html] [--compare OTHER.farc] [--attention MODE]
[--trace trace.json]`:
latency, energy and area of one inference per layer and per op kind, on the target the
program was compiled for; with --compare, two programs side by side (e.g. a FAR student and
its DeiT teacher). Attention's activation x activation matmuls are costed under the stated
--attention assumption (docs/cost-model.md). --trace writes MODEL.farc's schedule, the one
the latency is read from, as a Chrome trace-event file (Perfetto; farc/report/trace.py)."""

from __future__ import annotations

import click

from farc.targets.cost import ATTENTION_MODES


@click.command("report")
@click.argument("program_path", metavar="MODEL.farc", type=click.Path(dir_okay=False))
@click.option("--compare", "compare_path", type=click.Path(dir_okay=False), default=None,
              metavar="OTHER.farc", help="A second program to show side by side.")
@click.option("--attention", type=click.Choice(ATTENTION_MODES), default="digital",
              show_default=True,
              help="How activation x activation matmuls are costed: a digital matmul unit, "
                   "or crossbar rewrites (write latency/energy/endurance from the target).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Write a self-contained HTML page (charts embedded) here.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Change a cost constant of the program's target for this report, e.g. "
                   "energy.adc_conversion_pj=1.5625 (repeatable; cost sections only).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the raw cost reports as JSON here.")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False), default=None,
              metavar="FILE.json",
              help="Write MODEL.farc's schedule (crossbar MVMs, digital ops, transfers, per "
                   "resource, several images in flight) as a Chrome trace-event file that "
                   "Perfetto and chrome://tracing open.")
def command(program_path, compare_path, attention, html_path, overrides, json_path,
            trace_path) -> None:
    """Latency, energy and area report of MODEL.farc."""
    from pathlib import Path

    from rich.markup import escape

    from farc.atomic import check_outputs
    from farc.progress import out_console
    from farc.report.build import build_html, parse_overrides, program_name, report_for, to_json
    from farc.report.cost_tables import ATTENTION_NOTE, has_attention, to_rich
    from farc.runtime.program import Program

    check_outputs({"--html": html_path, "--json": json_path, "--trace": trace_path},  # first
                  {"MODEL.farc": program_path, "--compare": compare_path})
    paths = [program_path] + ([compare_path] if compare_path else [])
    programs = []
    for p in paths:
        prog = Program.load(p)
        programs.append((program_name(prog, Path(p).stem), prog))
    if len(programs) == 2 and programs[0][0] == programs[1][0]:
        programs = [(f"{n} [{Path(p).name}]", prog) for (n, prog), p in zip(programs, paths)]
    reports, sections = report_for(programs, attention, parse_overrides(overrides),
                                   schedule=bool(trace_path))
    console = out_console()
    if has_attention(reports):  # no act x act matmuls: nothing to assume
        console.print(f"[bold]assumption[/bold]: {escape(ATTENTION_NOTE[attention])}")
    for s in sections:
        console.print(to_rich(s))
    from farc.atomic import atomic_write_all

    texts = {}
    if html_path:
        texts[html_path] = build_html(reports, sections, [n for n, _ in programs])
    if json_path:
        texts[json_path] = to_json(reports)
    if trace_path:
        from farc.report.trace import to_trace_json

        texts[trace_path] = to_trace_json(reports[0][1], programs[0][0])
    atomic_write_all([(Path(p), lambda tmp, t=t: tmp.write_text(t, encoding="utf-8"))
                      for p, t in texts.items()])
    if html_path:
        console.print(f"HTML report: {html_path}")
    if json_path:
        console.print(f"JSON: {json_path}")
    if trace_path:
        console.print(f"trace: {trace_path} (open in https://ui.perfetto.dev)")
