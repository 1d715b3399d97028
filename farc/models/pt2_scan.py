"""Refuse an unsupported torch.export program (.pt2) without importing torch: the archive's
serialized graph (`<name>/models/model.json`, torch.export's JSON schema) is read with the
standard library, and every op farc cannot map is named in one line (farc.models.refusal),
as farc.models.from_torch does on the loaded program. Anything this reader does not
recognise (another archive layout, a schema change) is left to the full loader: the scan
can only refuse early, never accept.

What is read: graph_module.graph.nodes[*].target ("torch.ops.aten.<op>.<overload>"), each
node's first output name and metadata.nn_module_stack ("key,path,type;..." innermost last),
and graph_module.signature.input_specs (the user inputs)."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from farc.models.refusal import refuse

IDENTITY = ("clone", "contiguous", "dropout", "alias", "detach", "lift_fresh_copy",
            "feature_dropout")
UNARY = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "tanh": "tanh",
         "gelu": "gelu"}
BINARY = {"add": "add", "sub": "sub", "mul": "mul", "div": "div"}
DIGITAL = ("max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
           "adaptive_avg_pool2d", "mean", "sum", "amax", "log_softmax", "_log_softmax",
           "clamp", "hardtanh", "hardsigmoid", "hardswish", "leaky_relu", "constant_pad_nd",
           "pad")
"""The digital ops around crossbar layers (docs/byom.md): pooling (global average pooling
as adaptive_avg_pool to size 1), reductions, log_softmax, clamp and its kin, padding."""
SUPPORTED = sorted({"linear", "conv1d", "conv2d", "batch_norm", "lstm", "gru", *UNARY, *BINARY,
                    "softmax", "_softmax", "layer_norm", "matmul", "bmm", "view", "reshape",
                    "_unsafe_view", "flatten", "permute", "transpose", "t", "cat", "slice",
                    "select", "split", "split_with_sizes", "chunk", "squeeze", "unsqueeze",
                    "zeros", "sym_size", "zeros_like", "new_zeros", *IDENTITY, *DIGITAL})
"""ATen ops (overload packet names) farc maps; see farc.models.from_torch for their forms."""
SHOWN = [s for s in SUPPORTED if not s.startswith("_")]
"""The supported ops a refusal lists (aliases like _softmax left out)."""
ALTERNATIVES: dict[str, str | None] = {
    "pow": "mul (x * x for an exponent of 2)", "sqrt": None, "rsqrt": None, "abs": None,
    "exp": None, "log": None, "neg": "mul (by -1)", "reciprocal": "div (by a constant)",
    "silu": "sigmoid and mul", "mish": "tanh and mul", "elu": "relu", "selu": "relu",
    "celu": "relu", "prelu": "leaky_relu (one constant slope)", "softplus": "relu",
    "relu6": "clamp", "conv3d": "conv2d", "convolution": "conv2d",
    "conv_transpose2d": "conv2d", "conv_transpose1d": "conv1d",
    "_native_batch_norm_legit_no_training": "batch_norm", "instance_norm": "layer_norm",
    "group_norm": "layer_norm", "rms_norm": "layer_norm", "rnn_tanh": "lstm or gru",
    "rnn_relu": "lstm or gru", "max": "amax", "min": None, "argmax": None, "where": None,
    "embedding": "linear (of a one-hot input)", "einsum": "matmul",
    "baddbmm": "matmul and add", "addmm": "linear", "expand": None, "repeat": "cat",
    "scaled_dot_product_attention": "matmul, softmax and matmul",
}
"""ATen op -> the nearest op farc maps (named in the refusal); None, or an op missing here,
is refused as having no supported alternative."""
GETITEM = "_operator.getitem"
NO_MODULE = "_empty_nn_module_stack"
"""The module path torch.export records for nodes outside any module (the sym_size of a
dynamic batch): not a module, so not named."""


def check_pt2_file(path: str | Path) -> None:
    """Refuse `path` if its graph holds ops farc cannot map or more than one input; return
    quietly when it does not, or when the archive is not one this reader understands."""
    program = _read_program(Path(path))
    if program is None:
        return
    try:
        graph = program["graph_module"]["graph"]
        found = list(_unsupported(graph["nodes"]))
        inputs = [_arg_name(s["user_input"]["arg"])
                  for s in program["graph_module"]["signature"]["input_specs"]
                  if "user_input" in s]
    except (KeyError, TypeError, IndexError, AttributeError):
        return
    refuse("torch", found, SHOWN, inputs, ALTERNATIVES)


def _read_program(path: Path) -> dict | None:
    """The one serialized program in the archive, or None."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("/models/model.json")]
            if len(names) != 1:
                return None
            program = json.loads(z.read(names[0]))
    except (OSError, zipfile.BadZipFile, ValueError, KeyError):
        return None
    return program if isinstance(program, dict) else None


def _unsupported(nodes: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for node in nodes:
        target = node["target"]
        if target == GETITEM:
            continue
        op = target.split(".")[-2] if target.startswith("torch.ops.") else target
        if op not in SUPPORTED:
            yield op, _where(node)


def _where(node: dict[str, Any]) -> str:
    """"module PATH (node NAME)" as farc.models.from_torch names a node, else "node NAME"."""
    outs = node.get("outputs") or [{}]
    name = _arg_name(outs[0]) or "?"
    stack = (node.get("metadata") or {}).get("nn_module_stack") or ""
    path = stack.split(";")[-1].split(",")[1] if stack.count(",") >= 2 else ""
    path = "" if path.startswith(NO_MODULE) else path
    return f"module {path} (node {name})" if path else f"node {name}"


def _arg_name(arg: dict[str, Any]) -> str:
    """The name of a serialized argument ({"as_tensor": {"name": ...}} and kin)."""
    for value in arg.values():
        if isinstance(value, dict) and "name" in value:
            return str(value["name"])
    return ""
