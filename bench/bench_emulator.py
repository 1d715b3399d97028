"""Emulator throughput against onnxruntime float, measured in the same run.

Until compiled models are at hand it uses hand-built FAR blocks (runtime/handmade.py):
pre_proj -> per-head BiLSTMs in one lockstep loop -> head_proj -> post_proj -> residual,
as a tile program for the emulator and as a float ONNX model (native LSTM nodes) for
onnxruntime. For each shape it reports seconds per batch and the ratio emulator / ORT for
  - lossless: an ADC wide enough that every MVM takes the one-matmul fast path;
  - full-adc: an ISAAC-like 8-bit full-range ADC (step 2, lossy): the emulator's default
    `mvm_path="auto"` runs it on the split path (runtime/split.py), which gives the
    bit-level definition's integers without forming every partial sum.

Run:  python bench/bench_emulator.py [--shapes digits,tiny] [--repeat 3] [--threads 1]
      [--program X.farc [--onnx X.float.onnx]]
Both sides get the same thread count (numpy's BLAS via OPENBLAS_NUM_THREADS, onnxruntime
via intra_op_num_threads); it must be set before numpy loads, hence the early parse.
With --program, a compiled program is timed as well (emulator only, plus ORT on
`--onnx FILE` if given)."""

from __future__ import annotations

import argparse
import os
import sys
import time


def _threads_from_argv(default: int = 1) -> int:
    """--threads N, read before numpy is imported (BLAS reads its thread count at load)."""
    argv = sys.argv
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return default


THREADS = _threads_from_argv()
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from farc.runtime.builder import XbarParams  # noqa: E402
from farc.runtime.emulator import Emulator  # noqa: E402
from farc.runtime.handmade import FarBlockWeights, far_block_program  # noqa: E402
from farc.runtime.program import Program  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

# name -> (D, heads, hidden, tokens, batch)
SHAPES = {
    "digits": (64, 4, 16, 17, 64),    # deit_digits-sized FAR block, 17 tokens
    "tiny": (192, 3, 64, 197, 8),      # FAR-Tiny-shaped block at 197 tokens
}
CONFIGS = {
    name: XbarParams().with_overrides(**{"crossbar.rows": 128, "crossbar.cols": 128,
                                         "crossbar.cell_bits": 2, "dac.bits": 1, "adc.bits": b})
    for name, b in (("lossless", 9), ("full-adc", 8))
}


def onnx_block(w: FarBlockWeights, T: int) -> onnx.ModelProto:
    """The same block in float ONNX with one LSTM node per head and direction."""
    nodes, inits = [], []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def linear(x: str, W: np.ndarray, b: np.ndarray, out: str) -> str:
        nodes.append(helper.make_node("MatMul", [x, const(out + "_W", W)], [out + "_m"]))
        nodes.append(helper.make_node("Add", [out + "_m", const(out + "_b", b)], [out]))
        return out

    linear("x", *w.pre, "p")
    nodes.append(helper.make_node("Transpose", ["p"], ["pt"], perm=[1, 0, 2]))  # [T, B, D]
    heads = []
    for h in range(w.heads):
        nodes.append(helper.make_node(
            "Slice", ["pt", const(f"s{h}", np.array([h * w.d], np.int64)),
                      const(f"e{h}", np.array([(h + 1) * w.d], np.int64)),
                      const(f"a{h}", np.array([2], np.int64))], [f"ph{h}"]))
        outs = []
        for di, direction in ((0, "forward"), (1, "reverse")):
            c, H = w.lstm[h][di], w.hidden[h][di]
            order = np.concatenate([np.arange(0, H), np.arange(3 * H, 4 * H),
                                    np.arange(H, 2 * H), np.arange(2 * H, 3 * H)])  # i o f c
            tag = f"{h}{di}"
            nodes.append(helper.make_node(
                "LSTM", [f"ph{h}", const(f"W{tag}", c["w_ih"][order][None]),
                         const(f"R{tag}", c["w_hh"][order][None]),
                         const(f"B{tag}", np.concatenate([c["b"][order],
                                                          np.zeros(4 * H, np.float32)])[None])],
                [f"Y{tag}"], hidden_size=H, direction=direction))
            nodes.append(helper.make_node("Squeeze", [f"Y{tag}", const(f"ax{tag}",
                                                                       np.array([1], np.int64))],
                                          [f"y{tag}"]))
            outs.append(f"y{tag}")
        nodes.append(helper.make_node("Concat", outs, [f"hc{h}"], axis=-1))
        heads.append(linear(f"hc{h}", *w.head_proj[h], f"hp{h}"))
    nodes.append(helper.make_node("Concat", heads, ["cat"], axis=-1))
    linear("cat", *w.post, "proj")
    nodes.append(helper.make_node("Transpose", ["proj"], ["projb"], perm=[1, 0, 2]))
    nodes.append(helper.make_node("Add", ["x", "projb"], ["y"]))
    graph = helper.make_graph(
        nodes, "far_block", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                           ["B", T, w.D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", T, w.D])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def ort_session(model: bytes | str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def timeit(fn, repeat: int) -> float:
    """Best of `repeat` runs after a warm-up: the least disturbed by other load."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def time_pair(a, b, repeat: int) -> tuple[float, float]:
    """Best-of times of two functions measured alternately, so both see the same load."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeat):
        for fn, acc in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return min(ta), min(tb)


def bench_shape(name: str, repeat: int) -> list[tuple[str, float, float, float, float]]:
    D, heads, hidden, T, B = SHAPES[name]
    w = FarBlockWeights.random(D, heads, hidden, seed=0)
    x = np.random.default_rng(0).normal(size=(B, T, D)).astype(np.float32)
    sess = ort_session(onnx_block(w, T).SerializeToString())
    ref = sess.run(None, {"x": x})[0]
    rows = []
    for cfg_name, p in CONFIGS.items():
        emu = Emulator(far_block_program(w, T, p, calib=x))
        y = emu.run({"x": x})["y"]
        err = float(np.abs(y - ref).max() / np.abs(ref).max())
        t_emu, t_ort = time_pair(lambda emu=emu: emu.run({"x": x}),
                                 lambda: sess.run(None, {"x": x}), repeat)
        rows.append((f"{name} {cfg_name}", t_emu, t_ort, t_emu / t_ort, err))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="digits,tiny")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--program", default=None, help="also time a compiled .farc program")
    ap.add_argument("--onnx", default=None, help="float ONNX of --program, for the ratio")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="threads for both sides")
    args = ap.parse_args()
    print(f"threads: {THREADS}")
    print(f"{'case':<22}{'emulator s':>12}{'ort s':>10}{'ratio':>8}{'max rel err':>13}")
    for name in args.shapes.split(","):
        for case, te, to, ratio, err in bench_shape(name, args.repeat):
            print(f"{case:<22}{te:>12.4f}{to:>10.4f}{ratio:>8.2f}{err:>13.2e}")
    if args.program:
        bench_program(args.program, args.onnx, args.batch, args.repeat)


def bench_program(path: str, onnx_path: str | None, batch: int, repeat: int) -> None:
    prog = Program.load(path)
    spec = prog.inputs[0]
    x = np.random.default_rng(0).normal(size=(batch, *spec["shape"][1:])).astype(np.float32)
    emu = Emulator(prog)
    run_emu = lambda: emu.run({spec["name"]: x})  # noqa: E731
    if not onnx_path:
        print(f"{path:<22}{timeit(run_emu, repeat):>12.4f}")
        return
    sess = ort_session(onnx_path)
    name = sess.get_inputs()[0].name
    t_emu, t_ort = time_pair(run_emu, lambda: sess.run(None, {name: x}), repeat)
    line = f"{path:<22}{t_emu:>12.4f}{t_ort:>10.4f}{t_emu / t_ort:>8.2f}"
    print(line)


if __name__ == "__main__":
    main()
