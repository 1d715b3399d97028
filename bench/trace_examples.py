"""The traces of docs/cost-model.md ("Trace of the schedule"): `farc report --trace` on the
digits FAR and on FAR-T at 197 tokens, both on isaac (seeded random weights, compiled as
bench/bench_cost_model.py compiles them, cached in bench/.cache/cost197/), and a PNG of each
trace drawn from the trace file itself (farc.report.charts.trace_png).

Run:  python -m bench.trace_examples     (FAR-T compiles in a few minutes the first time)
Writes bench/.cache/trace/{digits_far,far_t}.json (open them in https://ui.perfetto.dev) and
docs/img/trace_digits_far.png, docs/img/trace_far_t.png."""

from __future__ import annotations

import json
import subprocess
import sys

from bench._common import CACHE, ROOT
from bench.bench_cost_model import compiled

MODELS = {"digits_far": ("far", "deit_digits"), "far_t": ("far", "deit_tiny_patch16_224")}


def main() -> None:
    from farc.report.charts import trace_png

    out = CACHE / "trace"
    out.mkdir(parents=True, exist_ok=True)
    for label, (kind, preset) in MODELS.items():
        compiled(label, kind, preset, "isaac")
        prog = CACHE / "cost197" / f"{label}_isaac.farc"
        trace = out / f"{label}.json"
        rep = out / f"{label}_report.json"
        subprocess.run([sys.executable, "-m", "farc", "report", str(prog), "--trace", str(trace),
                        "--json", str(rep)], check=True, stdout=subprocess.DEVNULL)
        doc = json.loads(trace.read_text())
        r = next(iter(json.loads(rep.read_text()).values()))
        o = doc["otherData"]
        n = sum(1 for e in doc["traceEvents"] if e["ph"] == "X")
        print(f"{label}: latency {r['latency_ns'] / 1e3:.1f} us (trace {o['latency_ns'] / 1e3:.1f}"
              f" us), {r['images_per_s']:,.0f} images/s (trace {o['images_per_s']:,.0f}), "
              f"bottleneck {o['bottleneck']}, in flight {o['in_flight']}, images drawn "
              f"{o['images_drawn']}, {n:,} spans, {trace.stat().st_size / 1e6:.1f} MB")
        png = ROOT / "docs" / "img" / f"trace_{label}.png"
        png.write_bytes(trace_png(doc, f"{label} on isaac: farc report --trace"))


if __name__ == "__main__":
    main()
