"""Import FAR checkpoints of the paper's reference implementation (github aliothren/FAR).

The reference code replaces each timm DeiT block's `attn` by one of two mixers, keeping
every other name of timm's VisionTransformer (`patch_embed.proj`, `cls_token`, `pos_embed`,
`blocks.{i}.norm1/norm2/mlp`, `norm`, `head`):

- `MultiHeadLstm`: `attn.pre_proj` Linear(D, D); `attn.lstm` one bidirectional nn.LSTM(D, Ht)
  (batch_first) kept block-diagonal by masks, so that head h's units (rows
  `g*Ht + h*k ... +k` of each gate g of weight_ih/weight_hh, PyTorch gate order i, f, g, o)
  read only input columns `h*D/H ... +D/H` and only the head's own units; `attn.head_proj`
  Linear(2*Ht, D) whose output rows of head h read only that head's forward units (first
  half of its input) and backward units (second half); `attn.post_proj` = DeiT's attn.proj.
- `ParallelLSTM` (the reference's hardware form): the same function with one
  nn.LSTM(D/H, k, bidirectional) per head (`attn.lstms.{h}`) and one Linear(2k, D/H) per head
  (`attn.head_projs.{h}`), the pre_proj output split into H equal chunks.

Both are exactly farc's FARMixer (farc/models/far.py) once split per head: pre_proj, then
per head a forward and a backward LSTM over the head's slice, head_proj of [fwd ; bwd], the
heads concatenated, post_proj; the block is x + mixer(norm1(x)), then the MLP. A unit that
provably cannot change the output (no outgoing weight, or an output that is always zero) is
removed, so a pruned checkpoint becomes physically smaller heads; nothing else is dropped
silently. The reference's own pruning zeroes a unit's input weights but keeps its biases and
its head_proj column: such a unit still adds an input-independent sequence to the output, so
it is kept unless the caller asks to drop it (the change is then measured and reported).

Loading never runs code from the file: torch.load(weights_only=True) first; a file it
refuses only because of pickled extras (the reference's training checkpoints hold an
argparse Namespace of training arguments; `torch.save(model)` files hold whole modules) is
read again by a restricted unpickler that allows torch's tensor rebuilders and nothing else:
every other global becomes an inert placeholder class that records its arguments and is
never called. Tensors are taken from the state dict (top level, or under `model`,
`state_dict`, `model_state_dict`) or from a pickled module's `_parameters`/`_buffers`."""

from __future__ import annotations

import collections
import pickle
import re
import types
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from farc.errors import CheckpointError
from farc.limits import check_memory
from farc.models.deit import DEIT_PRESETS, DeiT, DeiTConfig
from farc.models.far import FAR, FARConfig

DIRECTIONS = ("", "_reverse")  # nn.LSTM suffixes: forward, backward
LSTM_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


# ----------------------------------------------------------------------------- reading
class _Inert:
    """Stands for any pickled global that is not a tensor rebuilder: it records the arguments
    and state the pickle gives it and does nothing else (no method of the real class runs)."""

    _farc_global = "?"

    def __new__(cls, *args, **kwargs):  # NEWOBJ calls cls.__new__(cls, *args)
        obj = object.__new__(cls)
        obj.__dict__["_farc_args"] = args
        obj.__dict__["_farc_state"] = None
        obj.__dict__["_farc_items"] = {}
        return obj

    def __init__(self, *args, **kwargs) -> None:  # REDUCE calls cls(*args)
        pass

    def __setstate__(self, state) -> None:  # BUILD
        self.__dict__["_farc_state"] = state

    def __setitem__(self, key, value) -> None:  # SETITEMS on a dict subclass
        self.__dict__["_farc_items"][key] = value

    def append(self, value) -> None:  # APPENDS on a list subclass
        self.__dict__["_farc_items"][len(self._farc_items)] = value

    def extend(self, values) -> None:
        for v in values:
            self.append(v)

    def __repr__(self) -> str:
        return f"<inert {self._farc_global}>"


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The only real objects the restricted unpickler hands out: torch's tensor and parameter
    rebuilders, dtypes, Size, device and plain containers (all on torch's own weights-only
    list). They build tensors from the file's storages and run nothing else."""
    import torch._utils as tu

    allowed: dict[tuple[str, str], object] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): tu._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): tu._rebuild_parameter,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
    }
    for name, value in vars(torch).items():  # vars: no lazy submodule import
        if isinstance(value, torch.dtype):
            allowed[("torch", name)] = value
    return allowed


def _inert_pickle_module(seen: dict[str, type]) -> types.ModuleType:
    """A module shaped like `pickle` for torch.load(pickle_module=...): its Unpickler's
    find_class returns an allowed torch rebuilder or an inert placeholder type (recorded in
    `seen`); torch.load adds its storage handling (persistent_load) on top."""
    allowed = _allowed_globals()

    class InertUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            module = "builtins" if module == "__builtin__" else module  # protocol-2 name
            if (module, name) in allowed:
                return allowed[(module, name)]
            key = f"{module}.{name}"
            if key not in seen:
                seen[key] = type(name, (_Inert,), {"_farc_global": key})
            return seen[key]

    mod = types.ModuleType("farc_inert_pickle")
    mod.Unpickler = InertUnpickler
    mod.load = lambda f, **kw: InertUnpickler(f, **kw).load()
    return mod


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_object(path: Path, notes: list[str]) -> object:
    """The file's top-level object, never running code from it (see the module docstring)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    # its tensors are read into memory, then converted to float32 (twice an fp16 file)
    check_memory(2 * path.stat().st_size, f"{path}: importing it", CheckpointError)
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":
        from farc.models.loading import read_state_dict

        return read_state_dict(path)
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":
        raise CheckpointError(f"{path}: not a torch.save or safetensors file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: not the user's
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Weights only" not in str(exc):
            raise CheckpointError(f"{path}: unreadable torch file ({_first_line(exc)})") from None
    except Exception as exc:  # zip and pickle errors of a truncated or corrupt file
        raise CheckpointError(f"{path}: unreadable torch file ({_first_line(exc)})") from None
    seen: dict[str, type] = {}
    try:  # weights_only=False only because pickle_module restricts every global itself
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=False,
                             pickle_module=_inert_pickle_module(seen))
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable torch file ({_first_line(exc)})") from None
    kinds = sorted(seen)
    notes.append(f"pickled objects read as inert data, never run: {_listed(kinds)}")
    return obj


def extract_state_dict(path: Path, obj: object, notes: list[str],
                       key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a state dict (top level or under model/state_dict/model_state_dict, or
    under `key`, e.g. the reference's `model_ema`) or of a pickled nn.Module tree; non-tensor
    entries beside them are noted and ignored."""
    if isinstance(obj, _Inert):  # torch.save(model), as the reference's scripts do
        return _strip_ddp(_module_state(obj, ""))
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if key is not None and not isinstance(obj.get(key), (dict, _Inert)):
        raise CheckpointError(f"{path}: no state dict under key {key!r} (keys: "
                              f"{_listed(sorted(map(str, obj)))})")
    for name in ("model", "state_dict", "model_state_dict") if key is None else (key,):
        inner = obj.get(name)
        if isinstance(inner, _Inert):
            _note_extras(obj, {name}, notes)
            return _strip_ddp(_module_state(inner, ""))
        if isinstance(inner, dict) and inner and all(
                isinstance(v, torch.Tensor) for v in inner.values()):
            _note_extras(obj, {name}, notes)
            return _strip_ddp(dict(inner))
    if key is not None:
        raise CheckpointError(f"{path}: {key!r} holds no tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors (keys: {_listed(sorted(map(str, obj)))})")
    _note_extras(obj, set(tensors), notes)
    return _strip_ddp(tensors)


def _note_extras(obj: dict, used: set, notes: list[str]) -> None:
    extra = sorted(str(k) for k in obj if k not in used)
    if extra:
        notes.append(f"ignored non-weight entries: {_listed(extra)}")


def _strip_ddp(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def _module_state(node: _Inert, prefix: str) -> dict[str, torch.Tensor]:
    """state_dict() of a pickled nn.Module read as inert data: its `_parameters` and
    persistent `_buffers`, recursively through `_modules`."""
    state = node._farc_state
    if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
        state = state[0]
    if not isinstance(state, dict):
        return {}

    def dict_of(name: str) -> dict:
        value = state.get(name)
        return value if isinstance(value, dict) else {}

    out: dict[str, torch.Tensor] = {}
    skip = state.get("_non_persistent_buffers_set")
    skip = skip if isinstance(skip, (set, frozenset)) else set()
    for attr in ("_parameters", "_buffers"):
        for name, t in dict_of(attr).items():
            if isinstance(t, torch.Tensor) and not (attr == "_buffers" and name in skip):
                out[prefix + name] = t
    for name, child in dict_of("_modules").items():
        if isinstance(child, _Inert):
            out.update(_module_state(child, f"{prefix}{name}."))
    return out


# ----------------------------------------------------------------------------- one head
@dataclass
class HeadWeights:
    """One head of one block in the per-head form farc's FARMixer uses: per direction
    (forward, backward) the LSTM tensors [4k, d_in], [4k, k], [4k], [4k] and head_proj's
    columns [d, k] for that direction's units; head_proj's bias [d]."""

    lstm: list[dict[str, torch.Tensor]]
    proj_cols: list[torch.Tensor]
    proj_bias: torch.Tensor

    @property
    def units(self) -> tuple[int, int]:
        return tuple(w["weight_hh"].shape[1] for w in self.lstm)


def _gate_rows(units: list[int] | torch.Tensor, k: int, start: int = 0, stride: int | None = None):
    """Row indices of `units` in each of the 4 gates (i, f, g, o) of an LSTM weight whose gate
    blocks are `stride` rows apart (default k) and whose units start at `start`."""
    stride = k if stride is None else stride
    units = torch.as_tensor(units, dtype=torch.long)
    return torch.cat([g * stride + start + units for g in range(4)])


def removable_units(w: dict[str, torch.Tensor], cols: torch.Tensor,
                    drop_bias_only: bool) -> tuple[list[int], bool, int]:
    """Units of one LSTM direction to keep, whether the last one left could go too, and how
    many kept units are bias-only.

    A unit goes when it cannot change the output: nothing reads it (its head_proj column and
    the other kept units' recurrent weights from it are zero), or its output is always zero
    (its g-gate weights from the input and the kept units, and its summed g bias, are zero:
    with c_0 = 0 its cell never moves). Repeated to a fixed point, since removing a unit can
    leave another unread. A bias-only unit (every input and recurrent weight zero, biases
    not) emits an input-independent sequence: it goes only with `drop_bias_only`, which
    changes the function. At least one unit stays (farc's LSTMs have >= 1 unit)."""
    k = w["weight_hh"].shape[1]
    wih = w["weight_ih"].reshape(4, k, -1) != 0  # [gate, unit, input]
    whh = w["weight_hh"].reshape(4, k, k) != 0  # [gate, unit, unit read]
    g_bias = (w["bias_ih"] + w["bias_hh"]).reshape(4, k)[2] != 0
    read = whh.any(0) & ~torch.eye(k, dtype=torch.bool)  # read[v, u]: v reads u (v != u)
    no_input = ~wih.any(dim=(0, 2))
    no_proj = ~(cols != 0).any(0)
    kept = torch.ones(k, dtype=torch.bool)

    def criteria() -> tuple[torch.Tensor, torch.Tensor]:
        """(can go, bias-only) per unit, given the units kept now; removing units only makes
        a unit's criteria easier to meet, so removing every candidate at once is sound."""
        zero_output = ~wih[2].any(1) & ~(whh[2] & kept).any(1) & ~g_bias
        unread = no_proj & ~(read & kept[:, None]).any(0)
        bias_only = no_input & ~(whh & kept).any(dim=(0, 2))
        go = zero_output | unread | (bias_only if drop_bias_only else torch.zeros_like(kept))
        return go, bias_only & ~zero_output & ~unread

    while True:
        go, _ = criteria()
        go &= kept
        if not go.any():
            break
        if bool(go.sum() == kept.sum()):  # every unit could go: keep the first (>= 1 unit)
            first = int(kept.nonzero()[0])
            kept &= ~go
            kept[first] = True
            return [first], True, 0
        kept &= ~go
    _, bias_only = criteria()
    return kept.nonzero().flatten().tolist(), False, int((bias_only & kept).sum())


def shrink(head: HeadWeights, drop_bias_only: bool) -> tuple[HeadWeights, int]:
    """The head with removable units gone, and its count of kept bias-only units. When every
    unit of a direction could go, one stays with a zero head_proj column: exact, since it
    could go."""
    lstm, cols, bias_only = [], [], 0
    for w, c in zip(head.lstm, head.proj_cols):
        kept, last_silent, n = removable_units(w, c, drop_bias_only)
        bias_only += n
        rows = _gate_rows(kept, w["weight_hh"].shape[1])
        idx = torch.as_tensor(kept, dtype=torch.long)
        lstm.append({"weight_ih": w["weight_ih"][rows], "weight_hh": w["weight_hh"][rows][:, idx],
                     "bias_ih": w["bias_ih"][rows], "bias_hh": w["bias_hh"][rows]})
        cols.append(torch.zeros_like(c[:, idx]) if last_silent else c[:, idx])
    return HeadWeights(lstm, cols, head.proj_bias), bias_only


# ----------------------------------------------------------------------------- two forms
def _need(path: Path, sd: dict, names: list[str]) -> None:
    missing = [n for n in names if n not in sd]
    if missing:
        raise CheckpointError(f"{path}: missing {_listed(missing)}")


def _bilstm_shapes(path: Path, sd: dict, lstm: str, hp: str, hidden: int, d_in: int,
                   d_out: int) -> None:
    """The shapes of one bidirectional nn.LSTM (both directions) and its head_proj."""
    for s in DIRECTIONS:
        _shape(path, sd, f"{lstm}.weight_ih_l0{s}", (4 * hidden, d_in))
        _shape(path, sd, f"{lstm}.weight_hh_l0{s}", (4 * hidden, hidden))
        _shape(path, sd, f"{lstm}.bias_ih_l0{s}", (4 * hidden,))
        _shape(path, sd, f"{lstm}.bias_hh_l0{s}", (4 * hidden,))
    _shape(path, sd, f"{hp}.weight", (d_out, 2 * hidden))
    _shape(path, sd, f"{hp}.bias", (d_out,))


def _shape(path: Path, sd: dict, name: str, want: tuple[int, ...]) -> None:
    got = tuple(sd[name].shape)
    if got != want:
        raise CheckpointError(f"{path}: {name} has shape {list(got)}, expected {list(want)}")


def _lstm_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{p}_l0{s}" for s in DIRECTIONS for p in LSTM_PARAMS]


def _check_lstm_layers(path: Path, sd: dict, prefix: str) -> None:
    extra = [k for k in sd if k.startswith(prefix + ".") and not re.search(r"_l0(_reverse)?$", k)]
    if extra:
        raise CheckpointError(f"{path}: {extra[0]}: a multi-layer LSTM (num_layers > 1) has no "
                              "counterpart in farc's FAR (one bidirectional layer per head)")
    if f"{prefix}.weight_ih_l0" in sd and f"{prefix}.weight_ih_l0_reverse" not in sd:
        raise CheckpointError(f"{path}: {prefix} is not bidirectional (no *_reverse weights); "
                              "farc's FAR needs a forward and a backward LSTM per head")


def multihead_heads(path: Path, sd: dict, b: str, dim: int, heads: int,
                    offmask_tol: float, notes: list[str]) -> list[HeadWeights]:
    """Split one MultiHeadLstm block into heads, checking its block-diagonal masks."""
    lstm, hp = f"{b}.lstm", f"{b}.head_proj"
    _check_lstm_layers(path, sd, lstm)
    _need(path, sd, [*_lstm_keys(lstm), f"{hp}.weight", f"{hp}.bias"])
    total = sd[f"{lstm}.weight_hh_l0"].shape[1]
    if total % heads:
        raise CheckpointError(f"{path}: {lstm} has {total} hidden units, not divisible by "
                              f"{heads} heads")
    k, d_in = total // heads, dim // heads
    _bilstm_shapes(path, sd, lstm, hp, total, dim, dim)
    masks = _masks(total, dim, heads)
    for name, mask in [*((f"{lstm}.weight_ih_l0{s}", masks["ih"]) for s in DIRECTIONS),
                       *((f"{lstm}.weight_hh_l0{s}", masks["hh"]) for s in DIRECTIONS),
                       (f"{hp}.weight", masks["head"])]:
        off = (sd[name].float() * ~mask).abs()
        worst = float(off.max())
        if worst > offmask_tol:
            r, c = divmod(int(off.argmax()), off.shape[1])
            raise CheckpointError(
                f"{path}: {name} is not block-diagonal per head: |w[{r}, {c}]| = {worst:.3g} "
                f"outside the head masks (> --offmask-tol {offmask_tol:g}); farc would drop it")
        if worst > 0:
            notes.append(f"{name}: off-mask weights up to {worst:.3g} dropped "
                         f"(within --offmask-tol {offmask_tol:g})")
    out = []
    for h in range(heads):
        rows = _gate_rows(range(k), k, start=h * k, stride=total)
        ucols, icols = slice(h * k, (h + 1) * k), slice(h * d_in, (h + 1) * d_in)
        per_dir = [{"weight_ih": sd[f"{lstm}.weight_ih_l0{s}"][rows, icols],
                    "weight_hh": sd[f"{lstm}.weight_hh_l0{s}"][rows, ucols],
                    "bias_ih": sd[f"{lstm}.bias_ih_l0{s}"][rows],
                    "bias_hh": sd[f"{lstm}.bias_hh_l0{s}"][rows]} for s in DIRECTIONS]
        orows = slice(h * d_in, (h + 1) * d_in)
        cols = [sd[f"{hp}.weight"][orows, ucols],
                sd[f"{hp}.weight"][orows, total + h * k: total + (h + 1) * k]]
        out.append(HeadWeights(per_dir, cols, sd[f"{hp}.bias"][orows]))
    return out


def _masks(total: int, dim: int, heads: int) -> dict[str, torch.Tensor]:
    """Boolean masks of what each MultiHeadLstm weight may hold: head h's gate rows see only
    its input slice and its own units; head_proj's rows of head h see only its units."""
    k, d_in = total // heads, dim // heads
    ih = torch.zeros(4 * total, dim, dtype=torch.bool)
    hh = torch.zeros(4 * total, total, dtype=torch.bool)
    head = torch.zeros(dim, 2 * total, dtype=torch.bool)
    for h in range(heads):
        rows = _gate_rows(range(k), k, start=h * k, stride=total)
        ih[rows, h * d_in:(h + 1) * d_in] = True
        hh[rows, h * k:(h + 1) * k] = True
        head[h * d_in:(h + 1) * d_in, h * k:(h + 1) * k] = True
        head[h * d_in:(h + 1) * d_in, total + h * k:total + (h + 1) * k] = True
    return {"ih": ih, "hh": hh, "head": head}


def parallel_heads(path: Path, sd: dict, b: str, dim: int, heads: int) -> list[HeadWeights]:
    """Split one ParallelLSTM block: it already holds one LSTM and one head_proj per head."""
    found = _head_indices(sd, b)
    if found != list(range(heads)):
        raise CheckpointError(f"{path}: {b}.lstms holds heads {found}, expected 0..{heads - 1}")
    d_in = dim // heads
    out = []
    for h in range(heads):
        lstm, hp = f"{b}.lstms.{h}", f"{b}.head_projs.{h}"
        _check_lstm_layers(path, sd, lstm)
        _need(path, sd, [*_lstm_keys(lstm), f"{hp}.weight", f"{hp}.bias"])
        k = sd[f"{lstm}.weight_hh_l0"].shape[1]
        _bilstm_shapes(path, sd, lstm, hp, k, d_in, d_in)
        per_dir = [{p: sd[f"{lstm}.{p}_l0{s}"] for p in LSTM_PARAMS} for s in DIRECTIONS]
        w = sd[f"{hp}.weight"]
        out.append(HeadWeights(per_dir, [w[:, :k], w[:, k:]], sd[f"{hp}.bias"]))
    return out


# ----------------------------------------------------------------------------- the model
@dataclass
class ImportedFAR:
    """The imported model and what the import found."""

    model: FAR
    forms: list[str]
    notes: list[str] = field(default_factory=list)
    units_before: int = 0
    bias_only_kept: int = 0
    source_mixers: list[nn.Module] = field(default_factory=list)

    @property
    def units_after(self) -> int:
        return self.model.cfg.lstm_units


def resolve_config(path: Path, sd: dict, preset: str | DeiTConfig | None,
                   heads: int | None) -> DeiTConfig:
    """The DeiT shape: a preset (checked against the file) or inferred from tensor shapes.
    Heads: the preset's, `heads`, or the number of ParallelLSTM LSTMs."""
    from farc.models.loading import infer_deit_config

    if isinstance(preset, str):
        if preset not in DEIT_PRESETS:
            raise CheckpointError(f"unknown preset {preset!r}; expected one of "
                                  f"{', '.join(DEIT_PRESETS)}")
        cfg = DEIT_PRESETS[preset]
    elif isinstance(preset, DeiTConfig):
        cfg = preset
    else:
        cfg = infer_deit_config(sd, path)
        counted = _head_indices(sd, "blocks.0.attn")
        if heads is None and counted:
            heads = len(counted)
        elif heads is None:
            raise CheckpointError(f"{path}: the number of heads is not visible in a "
                                  "MultiHeadLstm checkpoint; give --preset or --heads")
    if heads is not None:
        cfg = replace(cfg, num_heads=heads)
    try:
        cfg.validate()
    except Exception as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return cfg


def import_reference_far(path: str | Path, preset: str | DeiTConfig | None = None,
                         heads: int | None = None, offmask_tol: float = 0.0,
                         drop_bias_only: bool = False, key: str | None = None) -> ImportedFAR:
    """Read a reference-implementation FAR file and return the equivalent farc FAR (eval)."""
    path = Path(path)
    notes: list[str] = []
    sd = extract_state_dict(path, load_object(path, notes), notes, key)
    sd = {k: v.detach().float() for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: {_listed(bad)} holds NaN or infinite values")
    if "distr_target" in sd:
        raise CheckpointError(f"{path}: an A-ViT (adaptive token halting) checkpoint; farc's "
                              "FAR runs every token through every block, so it is not "
                              "supported")
    cfg = resolve_config(path, sd, preset, heads)
    _check_skeleton(path, sd, cfg)
    blocks, forms, before, bias_only = [], [], 0, 0
    for i in range(cfg.depth):
        b = f"blocks.{i}.attn"
        form = _block_form(path, sd, b)
        forms.append(form)
        _need(path, sd, [f"{b}.{n}.{p}" for n in ("pre_proj", "post_proj")
                         for p in ("weight", "bias")])
        for n in ("pre_proj", "post_proj"):
            _shape(path, sd, f"{b}.{n}.weight", (cfg.embed_dim, cfg.embed_dim))
            _shape(path, sd, f"{b}.{n}.bias", (cfg.embed_dim,))
        if form == "MultiHeadLstm":
            hw = multihead_heads(path, sd, b, cfg.embed_dim, cfg.num_heads, offmask_tol, notes)
        else:
            hw = parallel_heads(path, sd, b, cfg.embed_dim, cfg.num_heads)
        before += sum(sum(h.units) for h in hw)
        small = [shrink(h, drop_bias_only) for h in hw]
        bias_only += sum(n for _, n in small)
        blocks.append([h for h, _ in small])
    model = _build(sd, cfg, blocks)
    source = [SourceMixer(sd, f"blocks.{i}.attn", f, cfg.embed_dim, cfg.num_heads).eval()
              for i, f in enumerate(forms)]
    if bias_only:
        notes.append(f"{bias_only} units have zero weights but nonzero biases (the reference's "
                     "pruning leaves them so): kept, since their input-independent output "
                     "reaches head_proj; --drop-bias-only-units removes them")
    return ImportedFAR(model, forms, notes, before, bias_only, source)


def _block_form(path: Path, sd: dict, b: str) -> str:
    if f"{b}.qkv.weight" in sd:
        raise CheckpointError(f"{path}: {b} is still attention (qkv); farc's FAR needs every "
                              "block's attention replaced by LSTMs")
    if any(k.startswith(f"{b}.lstm.") for k in sd):
        return "MultiHeadLstm"
    if any(k.startswith(f"{b}.lstms.") for k in sd):
        return "ParallelLSTM"
    raise CheckpointError(f"{path}: {b} is neither a MultiHeadLstm ({b}.lstm.*) nor a "
                          f"ParallelLSTM ({b}.lstms.N.*)")


def _check_skeleton(path: Path, sd: dict, cfg: DeiTConfig) -> None:
    """Every DeiT tensor outside attention, with its shape; nothing unknown outside it."""
    with torch.device("meta"):
        skeleton = {k: v for k, v in DeiT(cfg).state_dict().items() if ".attn." not in k}
    missing = sorted(set(skeleton) - set(sd))
    mixer = re.compile(r"blocks\.\d+\.attn\.(pre_proj|post_proj|lstm|lstms\.\d+|head_proj"
                       r"|head_projs\.\d+|qkv|proj)\.")  # qkv, proj: named in _block_form
    unexpected = sorted(k for k in set(sd) - set(skeleton) if not mixer.match(k)
                        or int(k.split(".")[1]) >= cfg.depth)
    if missing or unexpected:
        parts = ([f"missing {_listed(missing)}"] if missing else []) + (
            [f"unexpected {_listed(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{path}: not a FAR DeiT of this shape "
                              f"(depth {cfg.depth}, dim {cfg.embed_dim}); {'; '.join(parts)}")
    for k, v in skeleton.items():
        _shape(path, sd, k, tuple(v.shape))


def _build(sd: dict, cfg: DeiTConfig, blocks: list[list[HeadWeights]]) -> FAR:
    hidden = tuple(tuple(h.units for h in hw) for hw in blocks)
    with torch.device("meta"):
        model = FAR(FARConfig(cfg, hidden))
    state = {k: sd[k] for k in model.state_dict() if ".far." not in k}
    for i, hw in enumerate(blocks):
        src, dst = f"blocks.{i}.attn", f"blocks.{i}.far"
        for n in ("pre_proj", "post_proj"):
            for p in ("weight", "bias"):
                state[f"{dst}.{n}.{p}"] = sd[f"{src}.{n}.{p}"]
        for h, head in enumerate(hw):
            for dname, w in zip(("lstm_fwd", "lstm_bwd"), head.lstm):
                for p in LSTM_PARAMS:
                    state[f"{dst}.{dname}.{h}.{p}_l0"] = w[p]
            state[f"{dst}.head_proj.{h}.weight"] = torch.cat(head.proj_cols, dim=1)
            state[f"{dst}.head_proj.{h}.bias"] = head.proj_bias
    model.load_state_dict({k: v.contiguous().clone() for k, v in state.items()},
                          strict=True, assign=True)
    return model.eval()


class SourceMixer(nn.Module):
    """One block's mixer exactly as the reference code computes it, from the file's tensors:
    pre_proj; MultiHeadLstm's one wide bidirectional LSTM, or ParallelLSTM's per-chunk LSTMs
    and head_projs; post_proj. Used to measure what an import changed, never to build it."""

    def __init__(self, sd: dict, b: str, form: str, dim: int, heads: int) -> None:
        super().__init__()
        self.pre_proj, self.post_proj = (_linear(sd, f"{b}.{n}") for n in ("pre_proj", "post_proj"))
        self.heads = heads
        self.lstms = nn.ModuleList()
        if form == "MultiHeadLstm":
            self.lstms.append(_bilstm(sd, f"{b}.lstm", dim))
            self.projs = nn.ModuleList([_linear(sd, f"{b}.head_proj")])
        else:
            self.lstms.extend(_bilstm(sd, f"{b}.lstms.{h}", dim // heads) for h in range(heads))
            self.projs = nn.ModuleList(_linear(sd, f"{b}.head_projs.{h}") for h in range(heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_proj(x)
        chunks = torch.chunk(x, len(self.lstms), dim=-1)
        y = torch.cat([p(lstm(c)[0]) for lstm, p, c in zip(self.lstms, self.projs, chunks)], -1)
        return self.post_proj(y)


def _linear(sd: dict, name: str) -> nn.Linear:
    w = sd[f"{name}.weight"]
    with torch.device("meta"):  # no random init: the file's tensors go in
        lin = nn.Linear(w.shape[1], w.shape[0])
    lin.load_state_dict({"weight": w, "bias": sd[f"{name}.bias"]}, assign=True)
    return lin


def _bilstm(sd: dict, name: str, d_in: int) -> nn.LSTM:
    k = sd[f"{name}.weight_hh_l0"].shape[1]
    with torch.device("meta"):
        lstm = nn.LSTM(d_in, k, batch_first=True, bidirectional=True)
    lstm.load_state_dict({f"{p}_l0{s}": sd[f"{name}.{p}_l0{s}"]
                          for p in LSTM_PARAMS for s in DIRECTIONS}, assign=True)
    lstm.flatten_parameters()
    return lstm


def source_logits_change(imported: ImportedFAR, samples: int = 4) -> float:
    """Largest |imported - source| logit over a seeded random batch: the source computed by
    the imported model's own DeiT parts with each mixer swapped for its SourceMixer."""
    model = imported.model
    cfg = model.cfg.deit
    x = torch.randn(samples, cfg.in_chans, cfg.img_size, cfg.img_size,
                    generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # LSTM steps are small matmuls: more threads only contend
    try:
        return _logits_change(imported, x)
    finally:
        torch.set_num_threads(threads)


def _logits_change(imported: ImportedFAR, x: torch.Tensor) -> float:
    model = imported.model
    with torch.no_grad():
        got = model(x)
        t = model.embed(x)
        for blk, mixer in zip(model.blocks, imported.source_mixers):
            t = t + mixer(blk.norm1(t))
            t = t + blk.mlp(blk.norm2(t))
        return float((got - model.classify(t)).abs().max())


def _head_indices(sd: dict, b: str) -> list[int]:
    """The h of every `{b}.lstms.{h}.*` key: a ParallelLSTM block's heads."""
    pat = re.compile(rf"{re.escape(b)}\.lstms\.(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


def _listed(items: list[str], limit: int = 6) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


