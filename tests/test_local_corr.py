"""Tests of tritoncorr.kernels.local_corr: windowed correlation and fused local attention.

References first (against brute-force definitions), then the PyTorch op path (CPU ops, gradcheck,
opcheck, torch.compile), then the Triton kernels under the interpreter (tiny shapes), AOT and GPU.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from tritoncorr.kernels import local_corr as lc
from tritoncorr.kernels.local_corr import torch_path

from tests.kernel_harness import assert_close_verbose, fresh_generator, tolerance

HAS_CUDA = torch.cuda.is_available()


def _rand(gen, *shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)


def _inputs(B, C, D, H, W, *, dtype=torch.float32, device="cpu", seed=None):
    g = fresh_generator(seed)
    return (
        _rand(g, B, C, H, W, dtype=dtype, device=device),
        _rand(g, B, C, H, W, dtype=dtype, device=device),
        _rand(g, B, D, H, W, dtype=dtype, device=device),
    )


def _brute_correlation(q, k, r, dil):
    B, C, H, W = q.shape
    P = 2 * r + 1
    out = torch.zeros(B, P * P, H, W, dtype=torch.float64)
    for b in range(B):
        for y in range(H):
            for x in range(W):
                for a in range(P):
                    for c in range(P):
                        yy, xx = y + (a - r) * dil, x + (c - r) * dil
                        if 0 <= yy < H and 0 <= xx < W:
                            out[b, a * P + c, y, x] = (q[b, :, y, x].double() * k[b, :, yy, xx].double()).sum()
    return out


def _dense_attention(q, k, v, r, scale, border):
    """STT's dense formulation: (HW x HW) logits, Chebyshev window mask, plus phantom cells for 'zero'."""
    B, C, H, W = q.shape
    qf = q.double().flatten(2)  # (B, C, HW)
    kf = k.double().flatten(2)
    vf = v.double().flatten(2)
    logits = torch.einsum("bci,bcj->bij", qf, kf) * scale
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    inside = ((ys[:, None] - ys[None, :]).abs() <= r) & ((xs[:, None] - xs[None, :]).abs() <= r)
    logits = logits.masked_fill(~inside, float("-inf"))
    if border == "zero":  # (2r+1)^2 - #inside cells with logit 0 and value 0
        n_out = ((2 * r + 1) ** 2 - inside.sum(1)).double()
        phantom = torch.log(n_out).expand(B, -1).unsqueeze(-1)  # logsumexp of n_out zeros
        full = torch.cat([logits, phantom], dim=-1)
        lse = torch.logsumexp(full, dim=-1)
    else:
        lse = torch.logsumexp(logits, dim=-1)
    prob = torch.exp(logits - lse.unsqueeze(-1))
    out = torch.einsum("bij,bdj->bdi", prob, vf).view(B, -1, H, W)
    return out, lse.view(B, H, W)


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("r,dil", [(1, 1), (2, 2), (4, 1)])
def test_correlation_reference_matches_sampler_definition(r, dil):
    q, k, _ = _inputs(2, 3, 1, 5, 4)
    assert_close_verbose(
        lc.local_correlation_reference(q.double(), k.double(), r, dilation=dil),
        _brute_correlation(q, k, r, dil),
        atol=1e-10,
        rtol=1e-10,
        name="reference",
    )


@pytest.mark.parametrize("border", ["truncate", "zero"])
@pytest.mark.parametrize("r", [1, 3, 7])
def test_attention_reference_matches_dense_masked_softmax(border, r):
    q, k, v = _inputs(2, 4, 3, 6, 5)
    out, lse = lc.local_attention_reference(
        q.double(), k.double(), v.double(), r, scale=0.6, border=border, return_lse=True
    )
    dout, dlse = _dense_attention(q, k, v, r, 0.6, border)
    assert_close_verbose(out, dout, atol=1e-10, rtol=1e-10, name="out")
    assert_close_verbose(lse, dlse, atol=1e-10, rtol=1e-10, name="lse")


def test_window_cell_counts_and_row_sums():
    """STT invariants: 625/325/169 cells at res3 (interior/edge/corner) with r=12; zero mode counts all 625."""
    H = W = 26  # the centre (12, 12) sees the whole 25x25 window
    q = torch.zeros(1, 2, H, W, dtype=torch.float64)
    v = torch.ones(1, 1, H, W, dtype=torch.float64)
    _, lse = lc.local_attention(q, q, v, 12, border="truncate", return_lse=True)  # logits 0: lse = log(#cells)
    cells = torch.exp(lse[0])
    assert cells[12, 12].round().item() == 625
    assert cells[0, 12].round().item() == 325
    assert cells[0, 0].round().item() == 169
    out_t = lc.local_attention(q, q, v, 12, border="truncate")
    torch.testing.assert_close(out_t, torch.ones_like(out_t))  # rows sum to 1 over in-image cells
    out_z, lse_z = lc.local_attention(q, q, v, 12, border="zero", return_lse=True)
    torch.testing.assert_close(lse_z, torch.full_like(lse_z, math.log(625)))
    torch.testing.assert_close(out_z[0, 0], cells / 625)  # phantom cells take mass, carry value 0


def test_reference_gradcheck_fp64():
    q, k, v = (t.double().requires_grad_() for t in _inputs(1, 2, 1, 3, 4))
    assert torch.autograd.gradcheck(lambda a, b: lc.local_correlation_reference(a, b, 1, dilation=2), (q, k))
    for border in ("truncate", "zero"):
        assert torch.autograd.gradcheck(
            lambda a, b, c, border=border: lc.local_attention_reference(
                a, b, c, 2, scale=0.7, border=border, return_lse=True
            ),
            (q, k, v),
        )


# --------------------------------------------------------------------------------------------
# PyTorch op path (CPU custom ops)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("B,C,D,H,W,r,dil", [(2, 5, 3, 7, 9, 2, 1), (1, 3, 2, 4, 3, 5, 2), (1, 1, 1, 1, 1, 1, 1)])
def test_torch_path_matches_reference(torch_backend, B, C, D, H, W, r, dil):
    q, k, v = (t.double() for t in _inputs(B, C, D, H, W))
    assert_close_verbose(
        lc.local_correlation(q, k, r, dilation=dil),
        lc.local_correlation_reference(q, k, r, dilation=dil),
        atol=1e-10,
        rtol=1e-10,
        name="corr",
    )
    for border in ("truncate", "zero"):
        out, lse = lc.local_attention(q, k, v, r, scale=0.5, border=border, return_lse=True)
        rout, rlse = lc.local_attention_reference(q, k, v, r, scale=0.5, border=border, return_lse=True)
        assert_close_verbose(out, rout, atol=1e-10, rtol=1e-10, name=f"out {border}")
        assert_close_verbose(lse, rlse, atol=1e-10, rtol=1e-10, name=f"lse {border}")


@pytest.mark.parametrize("chunk", [None, 1, 2, 3], ids=["budget", "1-tile", "2-tiles", "3-tiles"])
@pytest.mark.parametrize(
    "B,C,D,H,W,r",
    [(2, 5, 3, 19, 13, 3), (1, 4, 2, 17, 35, 9), (1, 3, 1, 8, 8, 6), (2, 2, 1, 1, 9, 1), (1, 3, 2, 9, 41, 2)],
)
def test_torch_path_tiles_forward_and_backward(torch_backend, monkeypatch, chunk, B, C, D, H, W, r):
    """The tiled CPU path (8x8 tiles) across several tiles, partial tiles
    and both borders, with the budget's chunks (whole rows here) and chunks of 1, 2 and 3 tiles (rows
    ending in a shorter chunk; rectangles overlapping across chunk edges): out, lse and the gradients
    of a loss on both against the reference, in fp64."""
    if chunk is not None:
        monkeypatch.setattr(torch_path, "attn_chunk_tiles", lambda T, R, C, D, nbx, elt, backward: min(chunk, nbx))
    for border in ("truncate", "zero"):
        q, k, v = (t.double().requires_grad_() for t in _inputs(B, C, D, H, W))
        out, lse = lc.local_attention(q, k, v, r, scale=0.45, border=border, return_lse=True)
        rq, rk, rv = (t.detach().clone().requires_grad_() for t in (q, k, v))
        rout, rlse = lc.local_attention_reference(rq, rk, rv, r, scale=0.45, border=border, return_lse=True)
        assert_close_verbose(out, rout, atol=1e-10, rtol=1e-10, name=f"out {border}")
        assert_close_verbose(lse, rlse, atol=1e-10, rtol=1e-10, name=f"lse {border}")
        w_out, w_lse = torch.randn_like(out), torch.randn_like(lse)
        grads = torch.autograd.grad((out * w_out).sum() + (lse * w_lse).sum(), (q, k, v))
        rgrads = torch.autograd.grad((rout * w_out).sum() + (rlse * w_lse).sum(), (rq, rk, rv))
        for name, g, rg in zip("qkv", grads, rgrads):
            assert g.is_contiguous()
            assert_close_verbose(g, rg, atol=1e-9, rtol=1e-9, name=f"d{name} {border}")


def test_attention_chunk_budget():
    """Chunks hold as many tiles as the working-set budget allows (at least one, at most a row)."""
    for T, R, C, D, nbx in [(16, 40, 128, 1, 4), (8, 20, 1024, 1, 4), (8, 20, 64, 3, 8), (16, 80, 512, 1, 2)]:
        for backward in (False, True):
            n = torch_path.attn_chunk_tiles(T, R, C, D, nbx, 4, backward)
            one = torch_path.attn_chunk_tiles(T, R, C, D, 1, 4, backward)
            assert 1 <= n <= nbx and one == 1
            per_tile = torch_path.ATTN_CHUNK_BYTES // max(
                1, torch_path.attn_chunk_tiles(T, R, C, D, 10**6, 4, backward)
            )
            assert n == nbx or (n + 1) * per_tile > torch_path.ATTN_CHUNK_BYTES


def test_torch_path_gradcheck_fp64(torch_backend):
    q, k, v = (t.double().requires_grad_() for t in _inputs(1, 2, 1, 3, 4))
    assert torch.autograd.gradcheck(lambda a, b: lc.local_correlation(a, b, 2, dilation=2), (q, k))
    for border in ("truncate", "zero"):
        assert torch.autograd.gradcheck(
            lambda a, b, c, border=border: lc.local_attention(a, b, c, 2, scale=0.8, border=border, return_lse=True),
            (q, k, v),
        )


def test_torch_path_low_precision(torch_backend):
    for dtype in (torch.bfloat16, torch.float16):
        q, k, v = _inputs(2, 8, 3, 6, 7, dtype=dtype)
        atol, rtol = tolerance(dtype)
        out = lc.local_attention(q, k, v, 2, scale=0.35)
        assert out.dtype == dtype
        assert_close_verbose(
            out, lc.local_attention_reference(q, k, v, 2, scale=0.35), atol=atol, rtol=rtol, name=str(dtype)
        )
        corr = lc.local_correlation(q, k, 2)
        ref = lc.local_correlation_reference(q, k, 2)
        assert_close_verbose(corr, ref, atol=atol * 8, rtol=rtol, name=f"corr {dtype}")  # |values| ~ sqrt(C)


def test_opcheck_cpu_ops():
    q, k, v = _inputs(1, 3, 2, 4, 5)
    ops = torch.ops.tritoncorr
    torch.library.opcheck(ops.local_correlation_cpu.default, (q.requires_grad_(), k.requires_grad_(), 2, 1))
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    for border in ("truncate", "zero"):
        torch.library.opcheck(ops.local_attention_cpu.default, (q, k, v, 1, 0.5, border))
    out, lse = ops.local_attention_cpu(q.detach(), k.detach(), v.detach(), 1, 0.5, "zero")
    torch.library.opcheck(
        ops.local_attention_cpu_bwd.default,
        (q.detach(), k.detach(), v.detach(), out, lse, torch.randn_like(out), torch.randn_like(lse), 1, 0.5, "zero"),
    )
    torch.library.opcheck(
        ops.local_correlation_cpu_bwd.default, (torch.randn(1, 25, 4, 5), q.detach(), k.detach(), 2, 1)
    )


def test_torch_compile_fullgraph_cpu():
    def f(q, k, v):
        corr = lc.local_correlation(q, k, 1)
        out, lse = lc.local_attention(q, k, v, 2, scale=0.5, border="zero", return_lse=True)
        return corr.square().mean() + out.sum() + lse.mean()

    q, k, v = (t.requires_grad_() for t in _inputs(2, 4, 2, 5, 6, seed=3))
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    eager = torch.autograd.grad(f(q, k, v), (q, k, v))
    for a, b in zip(grads, eager):
        torch.testing.assert_close(a, b)


def test_input_errors():
    q, k, v = _inputs(1, 3, 2, 4, 5)
    with pytest.raises(ValueError, match="4 dimensions"):
        lc.local_correlation(q[0], k[0], 1)
    with pytest.raises(ValueError, match="shape of query"):
        lc.local_correlation(q, k[:, :2], 1)
    with pytest.raises(TypeError, match="share a dtype"):
        lc.local_correlation(q, k.double(), 1)
    with pytest.raises(ValueError, match="radius"):
        lc.local_correlation(q, k, -1)
    with pytest.raises(TypeError, match="radius"):
        lc.local_correlation(q, k, 1.5)
    with pytest.raises(ValueError, match="dilation"):
        lc.local_correlation(q, k, 1, dilation=0)
    with pytest.raises(ValueError, match="border"):
        lc.local_attention(q, k, v, 1, border="reflect")
    with pytest.raises(ValueError, match="value must be"):
        lc.local_attention(q, k, v[:, :, :3], 1)
    with pytest.raises(TypeError, match="value must have the dtype"):
        lc.local_attention(q, k, v.half(), 1)
    with pytest.raises(TypeError, match="int32|dtype"):
        lc.local_correlation(q.long(), k.long(), 1)
    with pytest.raises(ValueError, match="finite"):
        lc.local_attention(q, k, v, 1, scale=float("nan"))


# --------------------------------------------------------------------------------------------
# Triton kernels under the interpreter (tiny shapes)
# --------------------------------------------------------------------------------------------

_GRAD_TOL = (2e-4, 2e-4)


def _check_corr(q, k, r, dil, atol, rtol, precision="ieee"):
    qa, ka = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    out = lc.local_correlation(qa, ka, r, dilation=dil, input_precision=precision)
    qr, kr = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    ref = lc.local_correlation_reference(qr, kr, r, dilation=dil)
    assert out.dtype == q.dtype
    assert_close_verbose(out, ref, atol=atol, rtol=rtol, name="corr")
    g = torch.randn(ref.shape, generator=fresh_generator()).to(q.dtype)
    out.backward(g)
    ref.backward(g.to(ref.dtype))
    assert_close_verbose(qa.grad, qr.grad, atol=atol, rtol=rtol, name="corr dq")
    assert_close_verbose(ka.grad, kr.grad, atol=atol, rtol=rtol, name="corr dk")


def _check_attn(q, k, v, r, scale, border, atol, rtol, precision="ieee"):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    refs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, lse = lc.local_attention(*leaves, r, scale=scale, border=border, return_lse=True, input_precision=precision)
    rout, rlse = lc.local_attention_reference(*refs, r, scale=scale, border=border, return_lse=True)
    assert out.dtype == v.dtype and lse.dtype == torch.float32
    assert_close_verbose(out, rout, atol=atol, rtol=rtol, name=f"out {border}")
    assert_close_verbose(lse, rlse, atol=atol, rtol=rtol, name=f"lse {border}")
    gen = fresh_generator()
    g = torch.randn(rout.shape, generator=gen)
    gl = torch.randn(rlse.shape, generator=gen)  # the lse output is differentiable too
    ((out.float() * g).sum() + (lse * gl).sum()).backward()
    ((rout * g).sum() + (rlse * gl).sum()).backward()
    for name, a, b in zip(("dq", "dk", "dv"), leaves, refs):
        assert_close_verbose(a.grad, b.grad, atol=atol, rtol=rtol, name=f"{name} {border}")


@pytest.mark.interpreter
@pytest.mark.parametrize(
    "B,C,H,W,r,dil",
    [
        (2, 5, 7, 9, 2, 1),  # odd sizes, borders
        (1, 3, 3, 2, 4, 1),  # radius larger than H and W
        (2, 6, 9, 8, 1, 3),  # dilation: 3 x 3 sub-lattices
        (1, 1, 1, 1, 1, 1),  # size 1
        (1, 70, 19, 11, 3, 2),  # several tiles per sub-lattice, channels in 3 score blocks and 2 output blocks
    ],
)
def test_triton_correlation_matches_reference(triton_backend, B, C, H, W, r, dil):
    q, k, _ = _inputs(B, C, 1, H, W)
    _check_corr(q, k, r, dil, *_GRAD_TOL)


@pytest.mark.interpreter
@pytest.mark.parametrize(
    "B,C,D,H,W,r,border,scale",
    [
        (2, 5, 3, 7, 9, 2, "truncate", 0.45),
        (2, 5, 3, 7, 9, 2, "zero", 1.0),
        (1, 3, 2, 3, 2, 4, "truncate", 1.0),  # radius larger than the image
        (1, 3, 1, 2, 3, 4, "zero", 0.7),
        (1, 2, 1, 1, 1, 1, "truncate", 1.0),  # size 1
        (1, 4, 2, 19, 13, 3, "truncate", 0.5),  # 3 x 2 tiles, partial tiles, rectangles across tile edges
        (1, 4, 17, 17, 10, 9, "zero", 0.5),  # D > 16, rectangle of several key blocks
    ],
)
def test_triton_attention_matches_reference(triton_backend, B, C, D, H, W, r, border, scale):
    q, k, v = _inputs(B, C, D, H, W)
    _check_attn(q, k, v, r, scale, border, *_GRAD_TOL)


@pytest.mark.interpreter
def test_triton_channel_blocks(triton_backend):
    """C larger than one score block (fp32: 32 channels) and one output block (fp32: 64): the chunked
    reduction and the output-channel grid axis of dQ / dK / the correlation backward."""
    from tritoncorr.kernels.local_corr.triton_kernels import launch_config

    cfg = launch_config(70, 2, torch.float32, interpret=True)
    assert cfg["BLOCK_C"] < 70 and cfg["BLOCK_CO"] < 70
    q, k, v = _inputs(2, 70, 2, 5, 6)
    _check_attn(q * 0.2, k, v, 2, 0.3, "zero", *_GRAD_TOL)
    _check_attn(q * 0.2, k, v, 1, 0.3, "truncate", *_GRAD_TOL)
    _check_corr(q, k, 1, 1, *_GRAD_TOL)


@pytest.mark.interpreter
@pytest.mark.parametrize("border", ["truncate", "zero"])
def test_triton_attention_backward_through_volumes(triton_backend, border):
    """Features wider than FUSED_MAX_C: the backward writes dS and P as window volumes once and takes
    dQ, dK, dV from the correlation backward's products (no score recomputation per channel block)."""
    from tritoncorr.kernels.local_corr.triton_kernels import FUSED_MAX_C

    C = FUSED_MAX_C + 3
    q, k, v = _inputs(1, C, 3, 9, 10)
    _check_attn(q * 0.1, k, v, 2, 1 / math.sqrt(C), border, *_GRAD_TOL)


@pytest.mark.interpreter
def test_triton_non_contiguous(triton_backend):
    g = fresh_generator()
    base = torch.randn(2, 7, 8, 6, generator=g)
    q = base.permute(0, 3, 1, 2)[:, :5]  # (2, 5, 7, 8) with channel stride 1
    k = torch.randn(2, 5, 8, 7, generator=g).transpose(2, 3)  # (2, 5, 7, 8) transposed spatial dims
    v = torch.randn(2, 3, 7, 16, generator=g)[..., ::2]  # (2, 3, 7, 8) strided width
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    _check_attn(q, k, v, 2, 0.5, "truncate", *_GRAD_TOL)
    _check_corr(q, k, 1, 2, *_GRAD_TOL)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("border", ["truncate", "zero"])
def test_triton_low_precision(triton_backend, dtype, border):
    """16-bit inputs go to the tensor cores as they are; P and dS are rounded to the input dtype before
    their products (as flash-attention does), so the tolerance is a few units of that dtype."""
    q, k, v = _inputs(2, 6, 2, 11, 7, dtype=dtype)
    q = q * 0.5  # keep logits O(1): the tolerance is for accumulation, not for exp amplification
    atol, rtol = tolerance(dtype)
    _check_attn(q, k, v, 2, 1.0, border, atol * 4, rtol * 2)
    _check_corr(q, k, 1, 1, atol * 4, rtol * 2)


@pytest.mark.interpreter
def test_triton_tf32_precision(triton_backend):
    """The default input_precision ("tf32") and "tf32x3" give the reference within TF32's rounding."""
    q, k, v = _inputs(1, 24, 3, 9, 10)
    for precision in ("tf32", "tf32x3"):
        _check_attn(q * 0.3, k, v, 2, 1.0, "zero", 3e-3, 3e-3, precision=precision)
        _check_corr(q, k, 2, 1, 1e-2, 3e-3, precision=precision)


@pytest.mark.interpreter
def test_triton_path_errors(triton_backend):
    q, k, v = _inputs(1, 3, 65, 2, 2)
    with pytest.raises(ValueError, match="D <= 64"):
        lc.local_attention(q, k, v, 1)
    with pytest.raises(TypeError, match="float64"):
        lc.local_correlation(q.double(), k.double(), 1)
    with pytest.raises(ValueError, match="input_precision"):
        lc.local_correlation(q, k, 1, input_precision="fp32")


# --------------------------------------------------------------------------------------------
# Ahead-of-time compile (no GPU needed) and GPU
# --------------------------------------------------------------------------------------------

_AOT_SCRIPT = r"""
import json, os, sys
os.environ.pop("TRITON_INTERPRET", None)
from tritoncorr.kernels.aot import compile_report, family_specs
names = json.loads(sys.argv[1])
specs = [s for s in family_specs("local_corr") if not names or s.name in names]
print(json.dumps([r.__dict__ for r in compile_report(specs=specs)]))
"""


def _aot(names: list[str]):
    import json

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # real compilation, not the interpreter
    proc = subprocess.run(
        [sys.executable, "-c", _AOT_SCRIPT, json.dumps(names)], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_no_spills(records):
    assert records
    bad = [r for r in records if r["error"] or r["spills"] != 0 or r["registers"] <= 0]
    assert not bad, "\n".join(
        f"{r['kernel']} {r['arch']}: regs={r['registers']} spills={r['spills']} {r['error']}" for r in bad
    )


def _assert_tensor_cores(records):
    """Every configuration uses tensor cores: mma.sync on sm_80, wgmma on sm_90 for 16-bit inputs."""
    for r in records:
        if r["arch"] == "sm_90" and "bf16" in r["kernel"]:
            assert r["wgmma"] > 0, f"{r['kernel']} sm_90: no wgmma (mma.sync {r['mma']})"
        else:
            assert r["mma"] + r["wgmma"] > 0, f"{r['kernel']} {r['arch']}: no tensor-core instruction"


@pytest.mark.aot
def test_aot_specs_cover_every_kernel():
    from tritoncorr.kernels.aot import family_specs
    from tritoncorr.kernels.local_corr import triton_kernels as tk

    specs = family_specs("local_corr")
    assert {s.fn for s in specs} == {
        tk._corr_fwd_kernel,
        tk._corr_bwd_kernel,
        tk._attn_fwd_kernel,
        tk._attn_bwd_dq_kernel,
        tk._attn_bwd_dkdv_kernel,
    }
    names = [s.name for s in specs]
    assert len(names) == len(set(names))


@pytest.mark.aot
def test_aot_representative_configs():
    """The register-heaviest configurations (attention backward at D 3 and D 64, both dtypes),
    sm_80 and sm_90: 0 spills and tensor-core instructions. Every spec is compiled by the slow test below."""
    names = [
        "attn_bwd_dkdv_zero_bf16_c64_d3",
        "attn_bwd_dq_trunc_fp32_c64_d3",
        "attn_bwd_dkdv_trunc_bf16_c64_d64",
        "attn_fwd_trunc_bf16_c64_d3",
        "corr_bwd_dk_bf16_c64",
    ]
    records = _aot(names)
    assert {r["kernel"] for r in records} == set(names)
    _assert_no_spills(records)
    _assert_tensor_cores(records)


@pytest.mark.aot
@pytest.mark.slow
def test_aot_all_configs():
    records = _aot([])
    _assert_no_spills(records)
    _assert_tensor_cores(records)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "C,D,H,W,r,border", [(64, 3, 33, 31, 6, "zero"), (160, 1, 21, 19, 12, "truncate"), (8, 2, 5, 3, 4, "zero")]
)
def test_gpu_matches_reference(dtype, C, D, H, W, r, border):
    q, k, v = _inputs(2, C, D, H, W, dtype=dtype, device="cuda")
    scale = 1 / math.sqrt(C)
    atol, rtol = tolerance(dtype) if dtype != torch.float32 else (2e-4, 2e-4)
    _check_attn(q, k, v, r, scale, border, atol * 4, rtol * 2)  # fp32: input_precision "ieee" (exact FMAs)
    _check_corr(q * scale, k, r, 1, atol * 4, rtol * 2)
    if dtype == torch.float32:  # the default, TF32 tensor cores
        _check_attn(q, k, v, r, scale, border, 1e-2, 1e-2, precision="tf32")
        _check_corr(q * scale, k, r, 1, 2e-2, 1e-2, precision="tf32")


@pytest.mark.gpu
def test_gpu_compile_fullgraph():
    q, k, v = (t.requires_grad_() for t in _inputs(2, 32, 3, 16, 16, device="cuda"))

    def f(q, k, v):
        return lc.local_attention(q, k, v, 3, border="zero").sum() + lc.local_correlation(q, k, 2).mean()

    loss = torch.compile(f, fullgraph=True)(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    eager = torch.autograd.grad(f(q, k, v), (q, k, v))
    for a, b in zip(grads, eager):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Benchmark cases
# --------------------------------------------------------------------------------------------


def test_bench_cases_quick_cpu():
    from tritoncorr.bench import local_corr as bench
    from tritoncorr.bench.core import SkipProvider

    cases = bench.cases(torch.device("cpu"), quick=False, tiny=True)
    assert {c.mode for c in cases} == {"fwd", "bwd", "fwd+bwd"}
    assert {c.kernel for c in cases} == {"local_attention", "local_correlation"}
    for case in cases:
        assert set(case.providers) == {"triton", "torch", "unfold"}
        with pytest.raises(SkipProvider):
            case.providers["triton"]()
        results = {name: case.providers[name]()() for name in ("torch", "unfold")}
        a, b = results["torch"], results["unfold"]
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        else:
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


def test_unfold_attention_matches_reference():
    from tritoncorr.bench.local_corr import unfold_attention

    q, k, v = _inputs(2, 4, 3, 6, 7)
    for border in ("truncate", "zero"):
        assert_close_verbose(
            unfold_attention(q, k, v, 2, 0.5, border),
            lc.local_attention_reference(q, k, v, 2, scale=0.5, border=border),
            atol=1e-5,
            rtol=1e-5,
        )
