"""Refuse an unsupported ONNX graph in a fraction of a second: every node's op, the Conv
ranks and the graph's inputs are read straight from the protobuf wire format (standard
library only; `import onnx` alone takes about 1 s, torch several), and everything farc cannot
map is named in one line (farc.models.refusal). `farc compile` runs this before any heavy
import; farc.models.from_onnx applies the same check to a loaded proto.

What is read: ModelProto.graph (field 7) -> GraphProto.node (1), .initializer (5) and
.input (11); NodeProto.input (1), .name (3), .op_type (4), .attribute (5), .domain (7);
AttributeProto.name (1), .ints (8); TensorProto.dims (1), .name (8); ValueInfoProto.name (1).
Initializer payloads (raw_data, external data) are skipped, never read. Subgraphs (If, Loop)
are not entered: their parent node is refused already."""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from farc.errors import CheckpointError
from farc.models.refusal import refuse

SUPPORTED = ("Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant",
             "ConstantOfShape", "Conv", "Div", "Dropout", "Erf", "Expand", "Flatten", "Gather",
             "Gelu", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "GRU", "HardSigmoid",
             "HardSwish", "Identity", "LSTM", "LayerNormalization", "LeakyRelu", "LogSoftmax",
             "MatMul", "MaxPool", "Mul", "Pad", "ReduceMax", "ReduceMean", "ReduceSum", "Relu",
             "Reshape", "Shape",
             "Sigmoid", "Slice", "Softmax", "Split", "Squeeze", "Sub", "Tanh", "Transpose",
             "Unsqueeze", "Where")
"""ONNX ops farc maps (in the default domain); see farc.models.from_onnx for their forms."""
POOLS = ("MaxPool", "AveragePool")
"""Pooling ops, compiled over 1 or 2 spatial axes only."""
ALTERNATIVES: dict[str, str | None] = {
    "Pow": "Mul (x * x for an exponent of 2)", "Sqrt": None, "Abs": None, "Exp": None,
    "Log": None, "Reciprocal": "Div (by a constant)", "Neg": "Mul (by -1)",
    "Sum": "Add", "Mean": "Add and Mul", "Max": None, "Min": None,
    "ConvTranspose": "Conv", "Conv (3-d)": "Conv (1-d or 2-d)",
    "InstanceNormalization": "LayerNormalization", "GroupNormalization": "LayerNormalization",
    "LpNormalization": "LayerNormalization", "RNN": "LSTM or GRU",
    "PRelu": "LeakyRelu (one constant slope)", "Elu": "Relu", "Selu": "Relu", "Celu": "Relu",
    "ThresholdedRelu": "Relu", "Mish": "Tanh and Mul", "Softplus": "Relu",
    "Softsign": "Tanh", "Hardmax": "Softmax", "GlobalMaxPool": "ReduceMax (over H and W)",
    "LpPool": "AveragePool", "ReduceMin": None, "ReduceProd": None,
    "ReduceL2": None, "ArgMax": None, "ArgMin": None, "TopK": None,
    "Resize": None, "Upsample": None, "Tile": "Concat", "Einsum": "MatMul",
    "DepthToSpace": "Reshape and Transpose", "SpaceToDepth": "Reshape and Transpose",
    "QuantizeLinear": "none: give the float model, farc quantizes it",
    "DequantizeLinear": "none: give the float model, farc quantizes it",
    "Equal": None, "Less": None, "Greater": None, "Not": None, "And": None, "Or": None,
    "If": None, "Loop": None, "Scan": None, "Range": None, "NonZero": None, "CumSum": None,
}
"""Op -> the nearest op farc supports (what to rewrite it as), named in the refusal; None,
or an op missing here, is refused as having no supported alternative."""


@dataclass
class OnnxNode:
    op_type: str
    name: str
    domain: str = ""
    inputs: list[str] = field(default_factory=list)
    kernel_rank: int | None = None
    """len(kernel_shape) when the node has that attribute."""


@dataclass
class OnnxGraph:
    """What the refusal needs of a graph: nodes, initializer ranks, graph input names."""

    nodes: list[OnnxNode] = field(default_factory=list)
    init_rank: dict[str, int] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)

    @property
    def model_inputs(self) -> list[str]:
        """Graph inputs that are not initializers: what the user feeds."""
        return [n for n in self.inputs if n not in self.init_rank]


def node_name(node: OnnxNode, i: int) -> str:
    return node.name or f"{node.op_type}_{i}"


def unsupported(graph: OnnxGraph) -> Iterator[tuple[str, str]]:
    """(op, "node NAME") for every node farc cannot map, in graph order. A Conv counts as
    supported in 1-d and 2-d (weights of rank 3 or 4); others are listed as e.g.
    "Conv (3-d)"."""
    for i, node in enumerate(graph.nodes):
        where = f"node {node_name(node, i)}"
        if node.domain not in ("", "ai.onnx"):
            yield f"{node.domain}::{node.op_type}", where
        elif node.op_type not in SUPPORTED:
            yield node.op_type, where
        elif node.op_type == "Conv":
            rank = _conv_rank(node, graph)
            if rank is not None and rank not in (1, 2):
                yield f"Conv ({rank}-d)", where
        elif node.op_type in POOLS and node.kernel_rank not in (None, 1, 2):
            yield f"{node.op_type} ({node.kernel_rank}-d)", where


def _conv_rank(node: OnnxNode, graph: OnnxGraph) -> int | None:
    if len(node.inputs) > 1 and node.inputs[1] in graph.init_rank:
        return graph.init_rank[node.inputs[1]] - 2
    return node.kernel_rank


def check_graph(graph: OnnxGraph) -> None:
    """Raise UnsupportedModelError naming every unsupported op and a wrong input count."""
    refuse("ONNX", unsupported(graph), SUPPORTED, graph.model_inputs, ALTERNATIVES)


def check_onnx_file(path: str | Path) -> None:
    """Refuse `path` if farc cannot compile its ops or inputs, without importing onnx or
    torch. A file this reader cannot parse is left to the full loader (its error names it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            graph = _scan_or_none(m)
    except (ValueError, OSError):  # an empty or unmappable file
        return
    if graph is not None:  # else not protobuf as we read it: onnx.load names the problem
        check_graph(graph)


def _scan_or_none(m: mmap.mmap) -> OnnxGraph | None:
    """scan(m), or None on malformed bytes (caught here, so no view outlives the map)."""
    try:
        return scan(memoryview(m))
    except (ValueError, IndexError, UnicodeDecodeError):
        return None


# ---------------------------------------------------------------- the wire format
def scan(buf: memoryview) -> OnnxGraph:
    """An OnnxGraph from a serialized ModelProto (raises ValueError on malformed bytes)."""
    graph = OnnxGraph()
    for num, value in _fields(buf):
        if num == 7 and isinstance(value, memoryview):
            _graph(value, graph)
    return graph


def _graph(buf: memoryview, graph: OnnxGraph) -> None:
    for num, value in _fields(buf):
        if not isinstance(value, memoryview):
            continue
        if num == 1:
            graph.nodes.append(_node(value))
        elif num == 5:
            name, rank = _tensor(value)
            graph.init_rank[name] = rank
        elif num == 11:
            graph.inputs.append(next((_str(v) for n, v in _fields(value) if n == 1), ""))


def _node(buf: memoryview) -> OnnxNode:
    node = OnnxNode("", "")
    for num, value in _fields(buf):
        if num == 1:
            node.inputs.append(_str(value))
        elif num == 3:
            node.name = _str(value)
        elif num == 4:
            node.op_type = _str(value)
        elif num == 7:
            node.domain = _str(value)
        elif num == 5 and isinstance(value, memoryview):
            name, ints = _attribute(value)
            if name == "kernel_shape":
                node.kernel_rank = ints
    return node


def _attribute(buf: memoryview) -> tuple[str, int]:
    """(name, number of ints) of an AttributeProto."""
    name, n = "", 0
    for num, value in _fields(buf):
        if num == 1:
            name = _str(value)
        elif num == 8:
            n += _count_ints(value)
    return name, n


def _tensor(buf: memoryview) -> tuple[str, int]:
    """(name, rank) of a TensorProto; its data is skipped."""
    name, rank = "", 0
    for num, value in _fields(buf):
        if num == 1:
            rank += _count_ints(value)
        elif num == 8:
            name = _str(value)
    return name, rank


def _count_ints(value: int | memoryview) -> int:
    """A repeated int64 field: one value unpacked, or a packed run of varints."""
    if isinstance(value, int):
        return 1
    return sum(1 for b in value if b < 0x80)


def _str(value: int | memoryview) -> str:
    if not isinstance(value, memoryview):
        raise ValueError("expected a string field")
    return bytes(value).decode()


def _fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of one message: an int for varint/fixed fields, a memoryview
    for length-delimited ones."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ValueError("truncated field")
            value, pos = buf[pos:pos + size], pos + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, pos = int.from_bytes(buf[pos:pos + width], "little"), pos + width
        else:
            raise ValueError(f"wire type {wire}")
        if pos > end:
            raise ValueError("truncated field")
        yield num, value


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = buf[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
