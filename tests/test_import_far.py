"""`farc import-far`: FAR checkpoints of the paper's reference implementation (aliothren/FAR).

The reference formulation is written out here from the key layouts the reference code uses
(a timm DeiT skeleton whose blocks' `attn` is a MultiHeadLstm or a ParallelLSTM), with
random weights and pruned units; the importer must reproduce its logits. No expected value
comes from farc.models.reference_far (the code under test)."""

from __future__ import annotations

import argparse
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from farc.errors import CheckpointError
from farc.models.checkpoint import file_sha256, load_checkpoint
from farc.models.reference_far import import_reference_far


@dataclass(frozen=True)
class Shape:
    """The reference model's size: a DeiT plus MultiHeadLstm's hidden units per head (k)."""

    d: int = 48
    h: int = 3
    depth: int = 2
    patch: int = 4
    img: int = 8
    chans: int = 1
    classes: int = 10
    mlp: int = 2
    k: int = 16

    @property
    def dh(self) -> int:
        return self.d // self.h


DIGITS = Shape()  # = the deit_digits_3h preset
TINY = Shape(d=192, h=3, depth=12, patch=16, img=224, chans=3, classes=1000, mlp=4, k=64)
D, H, DEPTH, K, DH = DIGITS.d, DIGITS.h, DIGITS.depth, DIGITS.k, DIGITS.dh


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matmuls: extra threads only contend on a shared machine (100x slower measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- reference
class RefMultiHeadLstm(nn.Module):
    """The reference MultiHeadLstm: one bidirectional LSTM(d, h*k) block-diagonal by masks."""

    def __init__(self, s: Shape = DIGITS) -> None:
        super().__init__()
        self.pre_proj = nn.Linear(s.d, s.d)
        self.lstm = nn.LSTM(s.d, s.h * s.k, batch_first=True, bidirectional=True)
        self.head_proj = nn.Linear(2 * s.h * s.k, s.h * s.k)
        self.post_proj = nn.Linear(s.d, s.d)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if "weight_ih" in name:
                    p.mul_(block_mask(s.h, s.dh, s.k))
                elif "weight_hh" in name:
                    p.mul_(block_mask(s.h, s.k, s.k))
                elif name == "head_proj.weight":
                    p.mul_(head_mask(s.h, s.k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post_proj(self.head_proj(self.lstm(self.pre_proj(x))[0]))


def block_mask(heads: int, n_in: int, k: int) -> torch.Tensor:
    """Rows g*H*k + h*k .. +k (gate g of head h) see only input columns h*n_in .. +n_in."""
    m = torch.zeros(4 * heads * k, heads * n_in)
    for h in range(heads):
        for g in range(4):
            m[g * heads * k + h * k: g * heads * k + (h + 1) * k, h * n_in:(h + 1) * n_in] = 1
    return m


def head_mask(heads: int, k: int) -> torch.Tensor:
    one = torch.block_diag(*[torch.ones(k, k)] * heads)
    return torch.cat([one, one], dim=1)


class RefParallelLSTM(nn.Module):
    """The reference ParallelLSTM, generalised to a hidden size per head (pruned)."""

    def __init__(self, sizes: list[int], s: Shape = DIGITS) -> None:
        super().__init__()
        self.pre_proj = nn.Linear(s.d, s.d)
        self.lstms = nn.ModuleList(nn.LSTM(s.dh, k, batch_first=True, bidirectional=True)
                                   for k in sizes)
        self.head_projs = nn.ModuleList(nn.Linear(2 * k, s.dh) for k in sizes)
        self.post_proj = nn.Linear(s.d, s.d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = torch.chunk(self.pre_proj(x), len(self.lstms), dim=-1)
        return self.post_proj(torch.cat(
            [p(lstm(c)[0]) for lstm, p, c in zip(self.lstms, self.head_projs, chunks)], -1))


class RefMlp(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.fc1, self.act = nn.Linear(s.d, s.mlp * s.d), nn.GELU()
        self.fc2 = nn.Linear(s.mlp * s.d, s.d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RefBlock(nn.Module):
    def __init__(self, attn: nn.Module, s: Shape) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(s.d, eps=1e-6), attn
        self.norm2, self.mlp = nn.LayerNorm(s.d, eps=1e-6), RefMlp(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.proj = nn.Conv2d(s.chans, s.d, s.patch, s.patch)


class RefViT(nn.Module):
    """timm's VisionTransformer names; CLS pooling; the head reads norm(x)[:, 0]."""

    def __init__(self, mixers: list[nn.Module], s: Shape = DIGITS) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(s)
        self.cls_token = nn.Parameter(torch.randn(1, 1, s.d) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, (s.img // s.patch) ** 2 + 1, s.d) * 0.5)
        self.blocks = nn.ModuleList(RefBlock(m, s) for m in mixers)
        self.norm = nn.LayerNorm(s.d, eps=1e-6)
        self.head = nn.Linear(s.d, s.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


def _prune(lstm: nn.LSTM, units: list[int], n_heads: int, k: int, *, head: int = 0,
           proj: nn.Linear | None = None, proj_col0: int = 0) -> None:
    """Prune `units` of one head as the reference does (every gate's input and recurrent rows
    and the recurrent column zeroed, biases kept); with `proj`, also zero their head_proj
    columns (fwd at proj_col0 + unit, bwd half way along), which makes them removable."""
    total = n_heads * k
    with torch.no_grad():
        for s in ("", "_reverse"):
            ih, hh = getattr(lstm, f"weight_ih_l0{s}"), getattr(lstm, f"weight_hh_l0{s}")
            for u in units:
                for g in range(4):
                    ih[g * total + head * k + u] = 0
                    hh[g * total + head * k + u] = 0
                hh[:, head * k + u] = 0
        if proj is not None:
            half = proj.weight.shape[1] // 2
            for u in units:
                proj.weight[:, proj_col0 + u] = 0
                proj.weight[:, half + proj_col0 + u] = 0


def reference_model(form: str, seed: int = 0) -> RefViT:
    """Random weights, 3 heads, pruned: some units fully removable, some bias-only (kept)."""
    torch.manual_seed(seed)
    if form == "MultiHeadLstm":
        mixers = [RefMultiHeadLstm() for _ in range(DEPTH)]
        for m in mixers:  # head 0: 5 removable units; head 2: 3 removable + 1 bias-only
            _prune(m.lstm, [1, 4, 6, 9, 15], H, K, head=0, proj=m.head_proj, proj_col0=0)
            _prune(m.lstm, [0, 2, 3], H, K, head=2, proj=m.head_proj, proj_col0=2 * K)
            _prune(m.lstm, [7], H, K, head=2)
    else:
        mixers = [RefParallelLSTM([16, 11, 7]), RefParallelLSTM([9, 16, 5])]
        for m in mixers:  # head 1: 4 removable units (its own LSTM, so n_heads=1)
            _prune(m.lstms[1], [0, 3, 5, 8], 1, m.lstms[1].hidden_size,
                   proj=m.head_projs[1])
    return RefViT(mixers).eval()


def images(n: int = 6, s: Shape = DIGITS) -> torch.Tensor:
    return torch.rand(n, s.chans, s.img, s.img, generator=torch.Generator().manual_seed(1)) * 16


ARGS = argparse.Namespace(lr=5e-4, output_dir=Path("/nonexistent/run"), rep_by="multi-lstm")


def save(ref: RefViT, path: Path, layout: str) -> Path:
    """The ways the reference code saves: a bare state dict with the training arguments beside
    it, a training checkpoint {"model": ..., "args": Namespace, ...}, or the whole module."""
    sd = ref.state_dict()
    if layout == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        return path
    obj = {"top": {**sd, "args": ARGS}, "model": {"model": sd, "args": ARGS, "epoch": 7},
           "module": ref}[layout]
    torch.save(obj, path)
    return path


# ----------------------------------------------------------------------------- the import
@pytest.mark.parametrize("form", ["MultiHeadLstm", "ParallelLSTM"])
@pytest.mark.parametrize("layout", ["top", "model", "module", "safetensors"])
def test_import_equals_the_reference_formulation(form, layout, tmp_path):
    ref = reference_model(form)
    got = import_reference_far(save(ref, tmp_path / "ref.pth", layout), "deit_digits_3h")
    with torch.no_grad():
        want, have = ref(images()), got.model(images())
    torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)
    assert got.forms == [form] * DEPTH
    assert any("argparse.Namespace" in n for n in got.notes) is (layout in ("top", "model"))


@pytest.mark.slow
def test_deit_tiny_preset(tmp_path, capsys):
    """The issue's command: `farc import-far FILE --preset deit_tiny_patch16_224 -o far.pt`
    on a DeiT-Tiny-sized MultiHeadLstm training checkpoint (12 blocks, 197 tokens), head 1 of
    every block pruned by 20 units the reference's way (biases kept: bias-only units stay),
    head 2 of the odd blocks by 8 units with their head_proj columns zeroed too (removed)."""
    torch.manual_seed(0)
    mixers = [RefMultiHeadLstm(TINY) for _ in range(TINY.depth)]
    for i, m in enumerate(mixers):
        _prune(m.lstm, list(range(20)), TINY.h, TINY.k, head=1)
        if i % 2:
            _prune(m.lstm, list(range(30, 38)), TINY.h, TINY.k, head=2, proj=m.head_proj,
                   proj_col0=2 * TINY.k)
    ref = RefViT(mixers, TINY).eval()
    src, out = save(ref, tmp_path / "tiny.pth", "model"), tmp_path / "far.pt"
    _cli(["import-far", str(src), "--preset", "deit_tiny_patch16_224", "-o", str(out)])
    ckpt = load_checkpoint(out, expect="far")
    assert ckpt.model.cfg.hidden == tuple(((64, 64), (64, 64), (56 if i % 2 else 64,) * 2)
                                          for i in range(TINY.depth))
    with torch.no_grad():
        x = images(2, TINY) / 16
        torch.testing.assert_close(ckpt.model(x), ref(x), rtol=1e-4, atol=1e-5)
    assert "4608 -> 4512" in capsys.readouterr().out


def test_pruned_units_become_physically_smaller_heads(tmp_path):
    multi = import_reference_far(save(reference_model("MultiHeadLstm"), tmp_path / "m.pth",
                                      "model"), "deit_digits_3h")
    # head 0 loses 5 units, head 2 loses 3; the bias-only unit 7 of head 2 stays
    assert multi.model.cfg.hidden == (((11, 11), (16, 16), (13, 13)),) * DEPTH
    assert multi.bias_only_kept == 2 * 2 and multi.units_before == DEPTH * H * 2 * K
    par = import_reference_far(save(reference_model("ParallelLSTM"), tmp_path / "p.pth",
                                    "model"), "deit_digits_3h")
    assert par.model.cfg.hidden == (((16, 16), (7, 7), (7, 7)), ((9, 9), (12, 12), (5, 5)))


def test_dropping_bias_only_units_is_asked_for_and_changes_the_function(tmp_path):
    ref = reference_model("MultiHeadLstm")
    path = save(ref, tmp_path / "m.pth", "top")
    got = import_reference_far(path, "deit_digits_3h", drop_bias_only=True)
    assert got.model.cfg.hidden == (((11, 11), (16, 16), (12, 12)),) * DEPTH
    assert got.bias_only_kept == 0
    with torch.no_grad():
        assert (got.model(images()) - ref(images())).abs().max() > 1e-4


def test_unit_removal_follows_chains_and_stays_exact():
    """One ParallelLSTM head of 4 units, set by hand: unit 3 has no head_proj column and only
    unit 2 reads it, unit 2 has no head_proj column and nobody reads it, so both go (3 only
    once 2 is gone); unit 1's g-gate is all zero (weights and bias), so its output is 0 and
    it goes although head_proj reads it; unit 0 stays. Outputs must not change."""
    from farc.models.reference_far import HeadWeights, shrink

    torch.manual_seed(3)
    lstm, proj = nn.LSTM(DH, 4, batch_first=True), nn.Linear(4, DH)
    with torch.no_grad():
        hh, ih = lstm.weight_hh_l0.view(4, 4, 4), lstm.weight_ih_l0.view(4, 4, DH)
        hh[:, :, 3] = 0
        hh[:, 2, 3] = 0.7  # only unit 2 reads unit 3
        hh[:, :, 2] = 0  # nobody reads unit 2
        proj.weight[:, 2:] = 0
        ih[2, 1], hh[2, 1] = 0, 0  # unit 1's g-gate: zero weights ...
        lstm.bias_ih_l0.view(4, 4)[2, 1] = 0.25
        lstm.bias_hh_l0.view(4, 4)[2, 1] = -0.25  # ... and zero summed bias
    w = {p: getattr(lstm, f"{p}_l0").detach() for p in ("weight_ih", "weight_hh", "bias_ih",
                                                          "bias_hh")}
    small, _ = shrink(HeadWeights([w, w], [proj.weight.detach()] * 2, proj.bias.detach()), False)
    assert small.units == (1, 1)
    one = nn.LSTM(DH, 1, batch_first=True)
    one.load_state_dict({f"{p}_l0": t for p, t in small.lstm[0].items()})
    x = torch.randn(2, 5, DH)
    with torch.no_grad():
        full = proj(lstm(x)[0])
        cut = one(x)[0] @ small.proj_cols[0].T + proj.bias
    torch.testing.assert_close(cut, full, rtol=1e-6, atol=1e-6)


def test_ema_weights_on_request(tmp_path):
    """The reference's training checkpoints also hold the EMA weights, under model_ema."""
    live, ema = reference_model("ParallelLSTM", seed=0), reference_model("ParallelLSTM", seed=1)
    torch.save({"model": live.state_dict(), "model_ema": ema.state_dict(), "args": ARGS},
               tmp_path / "ckpt.pth")
    for key, ref in ((None, live), ("model_ema", ema)):
        got = import_reference_far(tmp_path / "ckpt.pth", "deit_digits_3h", key=key)
        with torch.no_grad():
            torch.testing.assert_close(got.model(images()), ref(images()), rtol=1e-5, atol=1e-5)
    with pytest.raises(CheckpointError, match=r"no state dict under key 'ema' \(keys: args, "
                                              r"model, model_ema\)"):
        import_reference_far(tmp_path / "ckpt.pth", "deit_digits_3h", key="ema")


def test_heads_inferred_without_a_preset(tmp_path):
    par = save(reference_model("ParallelLSTM"), tmp_path / "p.pth", "top")
    assert import_reference_far(par).model.cfg.deit.num_heads == H  # one LSTM per head
    multi = save(reference_model("MultiHeadLstm"), tmp_path / "m.pth", "top")
    with pytest.raises(CheckpointError, match=r"heads is not visible .* give --preset or --heads"):
        import_reference_far(multi)
    assert import_reference_far(multi, heads=H).model.cfg.deit.embed_dim == D


def test_a_pickled_call_is_never_made(tmp_path):
    """A file whose extras would run a command when unpickled: read as inert data."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    ref = reference_model("ParallelLSTM")
    torch.save({"model": ref.state_dict(), "hook": Evil()}, tmp_path / "evil.pth")
    got = import_reference_far(tmp_path / "evil.pth", "deit_digits_3h")
    assert not marker.exists()
    assert any("system" in n for n in got.notes)


def test_off_mask_weights_beyond_tolerance_are_refused_within_it_dropped(tmp_path):
    ref = reference_model("MultiHeadLstm")
    with torch.no_grad():
        ref.blocks[1].attn.lstm.weight_hh_l0_reverse[0, K + 2] = 3e-4  # head 0 reads head 1
    path = save(ref, tmp_path / "m.pth", "model")
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn\.lstm\.weight_hh_l0_reverse is "
                       r"not block-diagonal per head: \|w\[0, 18\]\| = 0\.0003"):
        import_reference_far(path, "deit_digits_3h")
    got = import_reference_far(path, "deit_digits_3h", offmask_tol=1e-3)
    assert any("off-mask weights up to 0.0003 dropped" in n for n in got.notes)


# ----------------------------------------------------------------------------- the command
def _cli(args: list[str]) -> None:
    from farc.cli import main

    main(args)


def test_cli_writes_a_farc_checkpoint(tmp_path, capsys):
    ref = reference_model("MultiHeadLstm")
    src = save(ref, tmp_path / "ref.pth", "model")
    out = tmp_path / "far.pt"
    _cli(["import-far", str(src), "--preset", "deit_digits_3h", "-o", str(out)])
    ckpt = load_checkpoint(out, expect="far")
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(images()), ref(images()), rtol=1e-5, atol=1e-5)
    prov = ckpt.provenance
    assert prov["command"] == "import-far" and prov["source_sha256"] == file_sha256(src)
    assert prov["source_form"] == "MultiHeadLstm"
    assert any("argparse.Namespace" in n for n in prov["notes"])
    assert prov["lstm_units"] == {"source": 192, "imported": 160}
    assert "192 -> 160" in capsys.readouterr().out


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    sd = reference_model("ParallelLSTM").state_dict()
    (tmp_path / "garbage.pth").write_bytes(b"\x80\x04not a pickle at all")
    two_layers = {**sd, "blocks.0.attn.lstms.1.weight_ih_l1": torch.zeros(44, 11)}
    torch.save(two_layers, tmp_path / "layers.pth")
    wrong = {k.replace("norm1", "ln1"): v for k, v in sd.items()}
    torch.save(wrong, tmp_path / "keys.pth")
    shape = dict(sd)
    shape["blocks.1.attn.head_projs.2.weight"] = torch.zeros(DH, 7)
    torch.save(shape, tmp_path / "shape.pth")
    multi = reference_model("MultiHeadLstm")
    with torch.no_grad():
        multi.blocks[0].attn.head_proj.weight[0, K] = 0.5  # head 0's output reads head 1
    torch.save(multi.state_dict(), tmp_path / "diag.pth")
    attn = {k: v for k, v in sd.items() if not k.startswith("blocks.1.attn.")}
    attn.update({"blocks.1.attn.qkv.weight": torch.zeros(3 * D, D),  # block 1 not replaced
                 "blocks.1.attn.qkv.bias": torch.zeros(3 * D),
                 "blocks.1.attn.proj.weight": torch.zeros(D, D),
                 "blocks.1.attn.proj.bias": torch.zeros(D)})
    torch.save(attn, tmp_path / "attn.pth")
    nan = dict(sd)
    nan["blocks.0.attn.pre_proj.bias"] = torch.full((D,), float("nan"))
    torch.save({"model": nan}, tmp_path / "nan.pth")
    torch.save({"model": {"weight": torch.zeros(3)}, "epoch": 1}, tmp_path / "other.pth")
    return {
        "garbage": (tmp_path / "garbage.pth", "unreadable torch file"),
        "text": (Path(__file__), "not a torch.save or safetensors file"),
        "layers": (tmp_path / "layers.pth", "multi-layer LSTM"),
        "keys": (tmp_path / "keys.pth", r"missing blocks\.0\.norm1\.bias.*unexpected"),
        "shape": (tmp_path / "shape.pth", r"head_projs\.2\.weight has shape \[16, 7\], expected "
                                          r"\[16, 10\]"),
        "diag": (tmp_path / "diag.pth", r"head_proj\.weight is not block-diagonal"),
        "attn": (tmp_path / "attn.pth", r"blocks\.1\.attn is still attention"),
        "nan": (tmp_path / "nan.pth", r"pre_proj\.bias holds NaN or infinite values"),
        "other": (tmp_path / "other.pth",
                  r"not a FAR DeiT of this shape .*missing blocks\.0.*; unexpected weight$"),
        "missing": (tmp_path / "nope.pth", "no such file"),
    }


def test_memory_budget_is_checked_before_reading(tmp_path, monkeypatch):
    path = save(reference_model("ParallelLSTM"), tmp_path / "p.pth", "top")
    monkeypatch.setenv("FARC_MAX_MEMORY", "64K")
    with pytest.raises(CheckpointError, match=r"p\.pth: importing it needs .* over the memory "
                                              r"budget of 64\.0 KiB"):
        import_reference_far(path, "deit_digits_3h")


@pytest.mark.parametrize("case", ["garbage", "text", "layers", "keys", "shape", "diag", "attn",
                                  "nan", "other", "missing"])
def test_cli_bad_file_one_line_exit_1_no_output(case, tmp_path, capsys):
    path, message = _bad_files(tmp_path)[case]
    out = tmp_path / "out" / "far.pt"
    with pytest.raises(SystemExit) as exc:
        _cli(["import-far", str(path), "--preset", "deit_digits_3h", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 1
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not out.exists() and not list(tmp_path.rglob("*.tmp"))


# ----------------------------------------------------------------------------- round trip
needs_compiler = pytest.mark.skipif(importlib.util.find_spec("tvm") is None,
                                    reason="apache-tvm is not installed")
LOSSLESS = ["--target", "isaac", "--weight-bits", "8", "--input-bits", "8", "--mapping",
            "differential", "--cell-bits", "2", "--dac-bits", "1", "--adc-bits", "9"]


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("form", ["MultiHeadLstm", "ParallelLSTM"])
def test_round_trip_compile_verify(form, tmp_path, capsys):
    """Must show: reference checkpoint -> farc checkpoint -> compile -> verify passes, exact
    (lossless ADC: emulator == reference, every layer's integers identical)."""
    src = save(reference_model(form), tmp_path / "ref.pth", "model")
    ckpt, prog = tmp_path / "far.pt", tmp_path / "far.farc"
    _cli(["import-far", str(src), "--preset", "deit_digits_3h", "-o", str(ckpt)])
    _cli(["compile", str(ckpt), *LOSSLESS, "--calib-samples", "32", "-o", str(prog)])
    capsys.readouterr()
    _cli(["verify", str(prog), "--samples", "32", "--min-agreement", "0",
          "--bitlevel-samples", "2"])
    out = capsys.readouterr().out
    with capsys.disabled():
        print(f"\n{form}:\n" + "\n".join(line for line in out.splitlines()
                                          if "emulator vs reference" in line or "pass" in line))
    assert "pass" in out.lower() and "FAIL" not in out
