"""The one-line refusal of a user's model (.onnx / .pt2): every unsupported op at once, each
with its first node and how many nodes use it. Standard library only, so that
`farc compile bad.onnx` can refuse before torch or onnx is imported (farc.models.onnx_scan).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from farc.errors import ConfigError


class UnsupportedModelError(ConfigError):
    """The model uses an op, or an op in a form, that farc cannot map (named in the message)."""


def unsupported_ops(found: Iterable[tuple[str, str]]) -> list[tuple[str, str, int]]:
    """(op, where) pairs in graph order -> (op, first where, count), in order of first use."""
    first: dict[str, str] = {}
    count: dict[str, int] = {}
    for op, where in found:
        first.setdefault(op, where)
        count[op] = count.get(op, 0) + 1
    return [(op, first[op], count[op]) for op in first]


NO_ALTERNATIVE = "no supported alternative"


def _alternative(op: str, alternatives: Mapping[str, str | None]) -> str:
    """"nearest supported: Mul" or "no supported alternative" for `op` ("Conv (1-d)" is
    looked up as itself, then as "Conv")."""
    alt = alternatives.get(op, alternatives.get(op.split(" (")[0]))
    if alt and alt.startswith("none"):  # "none: <what to do instead>"
        return alt
    return f"nearest supported: {alt}" if alt else NO_ALTERNATIVE


def refusal_message(kind: str, ops: Sequence[tuple[str, str, int]], supported: Sequence[str],
                    inputs: Sequence[str] | None = None,
                    alternatives: Mapping[str, str | None] | None = None) -> str:
    """One line naming every unsupported op (first node, node count and, with
    `alternatives`, the nearest supported op or that there is none) and, when `inputs` is
    given, the model's inputs beyond the one farc compiles.

    "the model takes 3 inputs (x, h0, c0), farc compiles models of one tensor input;
    unsupported ONNX ops Pad at node /pad/Pad (2 nodes), Sqrt at node /s/Sqrt: supported
    ops are Add, ..." """
    parts = []
    if inputs is not None and len(inputs) != 1:
        names = f" ({', '.join(inputs)})" if inputs else ""
        parts.append(f"the model takes {len(inputs)} inputs{names}, farc compiles models of "
                     "one tensor input")
    if ops:
        listed = ", ".join(f"{op} at {where}" + _notes(op, n, alternatives)
                           for op, where, n in ops)
        parts.append(f"unsupported {kind} op{'s' if len(ops) > 1 else ''} {listed}: "
                     f"supported ops are {', '.join(supported)}")
    return "; ".join(parts)


def _notes(op: str, n: int, alternatives: Mapping[str, str | None] | None) -> str:
    """" (2 nodes; nearest supported: Mul)", " (2 nodes)", "" ..."""
    notes = [f"{n} nodes"] if n > 1 else []
    if alternatives is not None:
        notes.append(_alternative(op, alternatives))
    return f" ({'; '.join(notes)})" if notes else ""


def refuse(kind: str, found: Iterable[tuple[str, str]], supported: Sequence[str],
           inputs: Sequence[str] | None = None,
           alternatives: Mapping[str, str | None] | None = None) -> None:
    """Raise UnsupportedModelError listing every unsupported op in `found` (and a wrong
    input count); return quietly when there is nothing to refuse."""
    message = refusal_message(kind, unsupported_ops(found), supported, inputs, alternatives)
    if message:
        raise UnsupportedModelError(message)


def check_model_file(path: str) -> None:
    """Refuse a .onnx or .pt2 file naming every unsupported op, without importing torch or
    onnx (farc.models.onnx_scan, farc.models.pt2_scan); other files pass untouched."""
    suffix = path.lower().rsplit(".", 1)[-1]
    if suffix == "onnx":
        from farc.models.onnx_scan import check_onnx_file

        check_onnx_file(path)
    elif suffix == "pt2":
        from farc.models.pt2_scan import check_pt2_file

        check_pt2_file(path)
