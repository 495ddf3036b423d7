"""Tests of the anchor-softmax kernels (DUL): fused NLL forward/backward, lse, group-restricted argmax.

Interpreter tests run the Triton kernels on CPU (TRITON_INTERPRET=1, set by conftest) with tiny shapes;
the PyTorch (chunked) path is tested with small chunks so that several chunks are exercised.
"""

from __future__ import annotations

import pytest
import torch
from tritoncorr.kernels import anchor_softmax as mod
from tritoncorr.kernels.anchor_softmax import (
    anchor_argmax,
    anchor_argmax_reference,
    anchor_lse,
    anchor_lse_reference,
    anchor_nll,
    anchor_nll_reference,
    anchor_soft_assignment,
)

from tests.kernel_harness import assert_close_verbose, check_aot_family, fresh_generator, tolerance


def _inputs(P, A, K, dtype, *, g, unit=True, non_contiguous=False, ignore_frac=0.3):
    f = torch.randn(P, K, generator=g, dtype=torch.float64)
    q = torch.randn(A, K, generator=g, dtype=torch.float64)
    if unit:  # DUL keys and anchors are unit norm
        f = f / f.norm(dim=1, keepdim=True)
        q = q / q.norm(dim=1, keepdim=True)
    labels = torch.randint(0, A, (P,), generator=g)
    labels[torch.rand(P, generator=g) < ignore_frac] = -1
    f, q = f.to(dtype), q.to(dtype)
    if non_contiguous:  # transposed storage for features, every other row for anchors
        f = f.T.contiguous().T
        q = torch.stack([q, torch.zeros_like(q)], dim=1).reshape(2 * A, K)[::2]
        assert not f.is_contiguous() and not q.is_contiguous()
    return f, q, labels


def _reference_grads(f, q, labels, tau, g_loss, g_lse=None):
    """Loss, lse and grads of the reference on fp64 copies of the (already rounded) inputs."""
    f64 = f.detach().double().requires_grad_()
    q64 = q.detach().double().requires_grad_()
    loss = anchor_nll_reference(f64, q64, labels, tau)
    lse = anchor_lse_reference(f64, q64, tau)
    total = (loss * g_loss.double()).sum()
    if g_lse is not None:
        total = total + (lse * g_lse.double()).sum()
    df, dq = torch.autograd.grad(total, (f64, q64))
    return loss.detach(), lse.detach(), df, dq


def _check_nll(f, q, labels, tau, *, g, with_lse_grad=False):
    P = f.shape[0]
    dtype = f.dtype
    atol, rtol = tolerance(dtype)
    f = f.detach().requires_grad_()
    q = q.detach().requires_grad_()
    g_loss = torch.randn(P, generator=g)
    g_lse = torch.randn(P, generator=g) if with_lse_grad else None
    loss = anchor_nll(f, q, labels, tau)
    assert loss.dtype == torch.float32 and loss.shape == (P,)
    total = (loss * g_loss).sum()
    if with_lse_grad:
        lse = anchor_lse(f, q, tau)
        total = total + (lse * g_lse).sum()
    df, dq = torch.autograd.grad(total, (f, q))
    r_loss, r_lse, r_df, r_dq = _reference_grads(f, q, labels, tau, g_loss, g_lse)
    assert_close_verbose(loss, r_loss, atol=atol, rtol=rtol, name="loss")
    if with_lse_grad:
        assert_close_verbose(lse, r_lse, atol=atol, rtol=rtol, name="lse")
    assert df.dtype == f.dtype and dq.dtype == q.dtype
    # gradients are sums over A (resp. P) terms: scale the absolute tolerance by the gradient's size
    assert_close_verbose(df, r_df, atol=atol * max(1.0, r_df.abs().max().item()), rtol=rtol, name="grad_features")
    assert_close_verbose(dq, r_dq, atol=atol * max(1.0, r_dq.abs().max().item()), rtol=rtol, name="grad_anchors")
    assert (loss[labels < 0] == 0).all()


# ---------------------------------------------------------------------------------------------
# Triton kernels under the interpreter
# ---------------------------------------------------------------------------------------------

NLL_CASES = [
    # P, A, K, dtype, tau, non_contiguous
    (1, 1, 7, torch.float32, 0.5, False),
    (37, 23, 20, torch.float32, 0.1, True),
    (70, 40, 32, torch.bfloat16, 0.1, False),
    (19, 17, 13, torch.float16, 0.3, True),
]


@pytest.mark.interpreter
@pytest.mark.parametrize("P,A,K,dtype,tau,non_contiguous", NLL_CASES)
def test_nll_triton_matches_reference(triton_backend, P, A, K, dtype, tau, non_contiguous):
    g = fresh_generator()
    f, q, labels = _inputs(P, A, K, dtype, g=g, non_contiguous=non_contiguous)
    _check_nll(f, q, labels, tau, g=g, with_lse_grad=(P > 1))


@pytest.mark.interpreter
def test_nll_triton_all_rows_ignored(triton_backend):
    g = fresh_generator()
    f, q, _ = _inputs(21, 18, 16, torch.float32, g=g)
    labels = torch.full((21,), -1, dtype=torch.int64)
    f.requires_grad_()
    q.requires_grad_()
    loss = anchor_nll(f, q, labels, 0.2)
    assert (loss == 0).all()
    df, dq = torch.autograd.grad(loss.sum(), (f, q))
    assert (df == 0).all() and (dq == 0).all()


@pytest.mark.interpreter
@pytest.mark.parametrize("splits", [2, 3])
def test_anchor_grad_split_over_rows(triton_backend, splits):
    """dA summed from several P splits (deterministic partial sums) equals the reference."""
    g = fresh_generator()
    P, A, K, tau = 70, 33, 24, 0.2
    f, q, labels = _inputs(P, A, K, torch.float32, g=g)
    _, lse = _tk().launch_fwd(_tk().no_wrap, f, q, labels, tau)
    g_loss = torch.randn(P, generator=g)
    g_lse = torch.randn(P, generator=g)
    df, dq = _tk().launch_bwd(_tk().no_wrap, f, q, labels, lse, g_loss, g_lse, tau, p_splits=splits)
    _, _, r_df, r_dq = _reference_grads(f, q, labels, tau, g_loss, g_lse)
    assert_close_verbose(df, r_df, atol=1e-4, rtol=1e-4, name="grad_features")
    assert_close_verbose(dq, r_dq, atol=1e-4, rtol=1e-4, name="grad_anchors")
    # same result as the single split, bit for bit up to summation order of the splits
    _, dq1 = _tk().launch_bwd(_tk().no_wrap, f, q, labels, lse, g_loss, g_lse, tau, p_splits=1)
    assert_close_verbose(dq, dq1, atol=1e-5, rtol=1e-5, name="splits vs single")


def _tk():
    """The Triton module of the family (imported here, not at the top: the file must import without Triton)."""
    from tritoncorr.kernels.anchor_softmax import triton_kernels

    return triton_kernels


def _integer_inputs(P, A, K, g):
    """Small integers: every dot product is exact in fp32/bf16, so ties are real ties."""
    f = torch.randint(-2, 3, (P, K), generator=g).float()
    q = torch.randint(-2, 3, (A, K), generator=g).float()
    return f, q


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_triton_groups_and_ties(triton_backend, dtype):
    g = fresh_generator()
    P, A, K = 53, 38, 9
    f, q = _integer_inputs(P, A, K, g)
    q[3] = 3.0  # outside the inputs' range -2..2: <q3, q3> = 81 beats every other anchor's <q3, q_a> <= 54
    q[20] = q[3]  # duplicate anchors in the same group -> ties, the lower index must win
    q[30] = q[3]
    # groups of unequal sizes (0: 14 anchors, 1: 23 anchors, 3: 1 anchor) and group 2 without anchors
    anchor_group = torch.cat([torch.zeros(12), torch.ones(25), torch.full((1,), 3)]).long()
    anchor_group[20] = 0
    anchor_group[30] = 0
    feature_group = torch.randint(0, 4, (P,), generator=g)
    feature_group[:4] = torch.tensor([0, 1, 2, 3])
    f[0] = q[3]  # row 0 (group 0) maximises the duplicated anchor
    f, q = f.to(dtype), q.to(dtype)
    out = anchor_argmax(f, q, feature_group, anchor_group)
    ref = anchor_argmax_reference(f, q, feature_group, anchor_group)
    assert out.dtype == torch.int64
    assert torch.equal(out, ref), f"argmax differs at rows {(out != ref).nonzero()[:5].flatten().tolist()}"
    assert out[0].item() == 3
    assert (out[feature_group == 2] == -1).all()
    assert (out[feature_group == 3] == 37).all()
    ok = out >= 0
    assert torch.equal(anchor_group[out[ok]], feature_group[ok])


@pytest.mark.interpreter
def test_argmax_triton_random_non_contiguous(triton_backend):
    g = fresh_generator()
    P, A, K = 61, 29, 31
    f, q, _ = _inputs(P, A, K, torch.float32, g=g, non_contiguous=True)
    feature_group = torch.randint(0, 3, (P,), generator=g).int()  # int32 groups are accepted
    anchor_group = torch.randint(0, 3, (A,), generator=g)
    out = anchor_argmax(f, q, feature_group, anchor_group)
    scores = (f.double() @ q.double().T).masked_fill(
        feature_group[:, None].long() != anchor_group[None, :], float("-inf")
    )
    best = scores.max(dim=1).values
    has = torch.isfinite(best)
    assert (out[~has] == -1).all()
    picked = scores[has].gather(1, out[has][:, None])[:, 0]
    assert (picked >= best[has] - 1e-5).all(), "picked anchor is not a maximum of its group"


@pytest.mark.interpreter
def test_poisoned_outputs_are_fully_written(triton_backend):
    """With TRITONCORR_POISON=1 every output starts as NaN / -1: no NaN may survive."""
    g = fresh_generator()
    f, q, labels = _inputs(45, 35, 17, torch.float32, g=g, ignore_frac=0.0)
    loss, lse = _tk().launch_fwd(_tk().no_wrap, f, q, labels, 0.3)
    df, dq = _tk().launch_bwd(_tk().no_wrap, f, q, labels, lse, torch.ones(45), torch.zeros(45), 0.3, p_splits=2)
    for name, t in (("loss", loss), ("lse", lse), ("grad_features", df), ("grad_anchors", dq)):
        assert not torch.isnan(t).any(), f"{name} has unwritten (NaN) elements"


# ---------------------------------------------------------------------------------------------
# PyTorch (chunked) path
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(mod, "CHUNK_ROWS", 7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nll_torch_path_matches_reference(torch_backend, small_chunks, dtype):
    g = fresh_generator()
    f, q, labels = _inputs(50, 31, 40, dtype, g=g, non_contiguous=True)
    _check_nll(f, q, labels, 0.1, g=g, with_lse_grad=True)


def test_argmax_torch_path_matches_reference(torch_backend, small_chunks):
    g = fresh_generator()
    f, q = _integer_inputs(40, 20, 6, g)
    q[11] = q[2]
    anchor_group = torch.tensor([0] * 5 + [1] * 14 + [4])
    anchor_group[11] = 0
    feature_group = torch.randint(0, 5, (40,), generator=g)
    out = anchor_argmax(f, q, feature_group, anchor_group)
    assert torch.equal(out, anchor_argmax_reference(f, q, feature_group, anchor_group))
    assert (out[(feature_group == 2) | (feature_group == 3)] == -1).all()


def test_gradcheck_reference_fp64():
    g = fresh_generator()
    f, q, labels = _inputs(9, 6, 5, torch.float64, g=g)
    f.requires_grad_()
    q.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: anchor_nll_reference(a, b, labels, 0.3), (f, q))
    assert torch.autograd.gradcheck(lambda a, b: anchor_lse_reference(a, b, 0.3), (f, q))


def test_gradcheck_torch_op_path_fp64(torch_backend, small_chunks):
    g = fresh_generator()
    f, q, labels = _inputs(17, 6, 5, torch.float64, g=g)
    f.requires_grad_()
    q.requires_grad_()
    assert anchor_nll(f, q, labels, 0.3).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda a, b: anchor_nll(a, b, labels, 0.3), (f, q))
    assert torch.autograd.gradcheck(lambda a, b: anchor_lse(a, b, 0.3) * 2 + anchor_nll(a, b, labels, 0.3), (f, q))


def test_opcheck_custom_ops(small_chunks):
    g = fresh_generator()
    f, q, labels = _inputs(11, 9, 8, torch.float32, g=g)
    _, lse = mod._anchor_nll_op(f, q, labels, 0.2)
    torch.library.opcheck(mod._anchor_nll_op, (f.requires_grad_(), q.requires_grad_(), labels, 0.2))
    torch.library.opcheck(
        mod._anchor_nll_backward_op,
        (f.detach(), q.detach(), labels, lse, torch.randn(11, generator=g), torch.randn(11, generator=g), 0.2),
    )
    torch.library.opcheck(
        mod._anchor_argmax_op, (f.detach(), q.detach(), torch.randint(0, 2, (11,)), torch.randint(0, 2, (9,)))
    )


@pytest.mark.parametrize("compile_backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_fullgraph_compile_cpu(torch_backend, compile_backend):
    """No graph break through the ops (fake implementations, autograd); inductor (~25 s C++ build) is opt-in."""
    g = fresh_generator()
    f, q, labels = _inputs(23, 13, 16, torch.float32, g=g)
    groups = torch.randint(0, 3, (23,), generator=g)
    anchor_groups = torch.randint(0, 3, (13,), generator=g)

    def step(feat, anc):
        loss = anchor_nll(feat, anc, labels, 0.1).mean() + 0.5 * anchor_lse(feat, anc, 0.1).mean()
        return loss, anchor_argmax(feat, anc, groups, anchor_groups)

    compiled = torch.compile(step, fullgraph=True, backend=compile_backend)
    f1, q1 = f.clone().requires_grad_(), q.clone().requires_grad_()
    loss_c, arg_c = compiled(f1, q1)
    loss_c.backward()
    f2, q2 = f.clone().requires_grad_(), q.clone().requires_grad_()
    loss_e, arg_e = step(f2, q2)
    loss_e.backward()
    assert_close_verbose(loss_c, loss_e, atol=1e-6, rtol=1e-6, name="loss")
    assert torch.equal(arg_c, arg_e)
    assert_close_verbose(f1.grad, f2.grad, atol=1e-6, rtol=1e-6, name="grad_features")
    assert_close_verbose(q1.grad, q2.grad, atol=1e-6, rtol=1e-6, name="grad_anchors")


def test_soft_assignment():
    g = fresh_generator()
    f, q, _ = _inputs(5, 12, 8, torch.float32, g=g)
    s = anchor_soft_assignment(f, q, 0.1)
    assert s.shape == (5, 12)
    assert_close_verbose(s.sum(dim=1), torch.ones(5), atol=1e-6, rtol=0, name="row sums")
    assert_close_verbose(
        s.log(),
        (f @ q.T / 0.1) - anchor_lse_reference(f, q, 0.1)[:, None],
        atol=1e-5,
        rtol=1e-5,
        name="log soft assignment",
    )


def test_bad_inputs_raise_clear_errors(torch_backend):
    f = torch.randn(4, 8)
    q = torch.randn(3, 8)
    labels = torch.tensor([0, 1, -1, 2])
    with pytest.raises(ValueError, match="disagree on K"):
        anchor_nll(f, torch.randn(3, 5), labels, 0.1)
    with pytest.raises(TypeError, match="anchors dtype"):
        anchor_nll(f, q.double(), labels, 0.1)
    with pytest.raises(ValueError, match="labels must be in"):
        anchor_nll(f, q, torch.tensor([0, 3, 0, 0]), 0.1)
    with pytest.raises(ValueError, match="labels must be in"):
        anchor_nll(f, q, torch.tensor([0, -2, 0, 0]), 0.1)
    with pytest.raises(TypeError, match="labels"):
        anchor_nll(f, q, labels.int(), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        anchor_nll(f, q, labels, 0.0)
    with pytest.raises(ValueError, match="A = 0"):
        anchor_nll(f, q[:0], labels, 0.1)
    with pytest.raises(ValueError, match="features must have 2 dimensions"):
        anchor_nll(f[None], q, labels, 0.1)
    with pytest.raises(ValueError, match="anchor_group has"):
        anchor_argmax(f, q, torch.zeros(4, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="feature_group"):
        anchor_argmax(f, q, torch.zeros(4), torch.zeros(3, dtype=torch.long))


@pytest.mark.interpreter
def test_triton_rejects_fp64(triton_backend):
    with pytest.raises(TypeError, match="fp64"):
        anchor_nll(
            torch.randn(3, 8, dtype=torch.float64),
            torch.randn(2, 8, dtype=torch.float64),
            torch.zeros(3, dtype=torch.long),
            0.1,
        )


# ---------------------------------------------------------------------------------------------
# Ahead-of-time compile (no GPU needed) and GPU tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.aot
def test_aot_no_spills_and_tensor_cores():
    """The fixed (autotuning off) config of every kernel, fp32 and bf16, at K = 128."""
    check_aot_family("anchor_softmax", fixed_only=True)


@pytest.mark.aot
@pytest.mark.slow
def test_aot_all_configs_no_spills_and_tensor_cores():
    check_aot_family("anchor_softmax")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("P,A,K", [(4099, 1024, 128), (1000, 77, 512), (257, 300, 33)])
def test_gpu_matches_reference(dtype, P, A, K):
    g = fresh_generator()
    f, q, labels = _inputs(P, A, K, dtype, g=g)
    dev = torch.device("cuda")
    f, q, labels = f.to(dev), q.to(dev), labels.to(dev)
    f.requires_grad_()
    q.requires_grad_()
    g_loss = torch.randn(P, generator=g).to(dev)
    loss = anchor_nll(f, q, labels, 0.07)
    df, dq = torch.autograd.grad((loss * g_loss).sum(), (f, q))
    f64 = f.detach().double().requires_grad_()
    q64 = q.detach().double().requires_grad_()
    ref = anchor_nll_reference(f64, q64, labels, 0.07)
    r_df, r_dq = torch.autograd.grad((ref * g_loss.double()).sum(), (f64, q64))
    atol, rtol = tolerance(dtype)
    assert_close_verbose(loss, ref, atol=atol * 10, rtol=rtol, name="loss")
    assert_close_verbose(df, r_df, atol=atol * max(1.0, r_df.abs().max().item()), rtol=rtol, name="grad_features")
    assert_close_verbose(dq, r_dq, atol=atol * max(1.0, r_dq.abs().max().item()), rtol=rtol, name="grad_anchors")
    groups = torch.arange(P, device=dev) % 16
    agroups = torch.arange(A, device=dev) % 17
    out = anchor_argmax(f.detach(), q.detach(), groups, agroups)
    scores = (f.detach().float() @ q.detach().float().T).masked_fill(groups[:, None] != agroups[None, :], float("-inf"))
    best = scores.max(dim=1).values
    has = torch.isfinite(best)
    assert (out[~has] == -1).all()
    assert (scores[has].gather(1, out[has][:, None])[:, 0] >= best[has] - 1e-3).all()


@pytest.mark.gpu
def test_gpu_fullgraph_compile_triton_op():
    dev = torch.device("cuda")
    g = fresh_generator()
    f, q, labels = _inputs(2048, 256, 128, torch.float32, g=g)
    f, q, labels = f.to(dev).requires_grad_(), q.to(dev).requires_grad_(), labels.to(dev)

    def fn(a, b):
        return anchor_nll(a, b, labels, 0.07).mean()

    loss_c = torch.compile(fn, fullgraph=True)(f, q)
    dfc, dqc = torch.autograd.grad(loss_c, (f, q))
    loss_e = fn(f, q)
    dfe, dqe = torch.autograd.grad(loss_e, (f, q))
    assert_close_verbose(loss_c, loss_e, atol=1e-5, rtol=1e-5, name="loss")
    assert_close_verbose(dfc, dfe, atol=1e-5, rtol=1e-5, name="grad_features")
    assert_close_verbose(dqc, dqe, atol=1e-5, rtol=1e-5, name="grad_anchors")


def test_bench_cases_quick_cpu():
    """The benchmark's providers compute the same thing (values, or gradients in the bwd modes): the chunked
    path vs the eager reference, for anchor_nll (DUL), anchor_argmax and anchor_lse at LIIR's bank
    layout (quick shapes)."""
    from tritoncorr.bench import anchor_softmax as bench
    from tritoncorr.bench.core import SkipProvider

    cases = bench.cases(torch.device("cpu"), quick=False, tiny=True)
    assert {c.kernel for c in cases} == {"anchor_nll", "anchor_argmax", "anchor_lse"}
    assert {c.mode for c in cases if c.kernel == "anchor_lse"} == {"fwd", "bwd", "fwd+bwd"}
    for case in cases:
        with pytest.raises(SkipProvider):
            case.providers["triton"]()
        a, b = case.providers["torch"]()(), case.providers["eager"]()()
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            torch.testing.assert_close(x.float(), y.float(), atol=1e-4, rtol=1e-4)
