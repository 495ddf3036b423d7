"""kNN-softmax propagation: reference, windowed PyTorch path, CRW-style dense path and Triton kernel."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from tests.kernel_harness import assert_close_verbose, fresh_generator, tolerance
from tritoncorr.kernels.knn_propagate import (
    knn_propagate,
    knn_propagate_dense,
    knn_propagate_reference,
    knn_propagate_windowed,
    window_propagate,
    window_propagate_reference,
    window_propagate_windowed,
)

K = importlib.import_module("tritoncorr.kernels.knn_propagate")  # the module; the package attribute of that name is the function


def _inputs(c, h, w, n, lab, *, dtype=torch.float32, seed=None, normalize=True):
    g = fresh_generator(seed)
    q = torch.randn(c, h, w, generator=g)
    k = torch.randn(n, c, h, w, generator=g)
    if normalize:
        q, k = F.normalize(q, dim=0), F.normalize(k, dim=1)
    v = torch.rand(n, lab, h, w, generator=g)
    return q.to(dtype), k.to(dtype), v


def _exact_inputs(c, h, w, n, lab, *, seed=None):
    """Features with entries in {-1, 0, 1}/4: every dot product is exact, so equal keys give exactly
    equal scores in every implementation (ties are real ties)."""
    g = fresh_generator(seed)
    q = torch.randint(-1, 2, (c, h, w), generator=g).float() / 4
    k = torch.randint(-1, 2, (n, c, h, w), generator=g).float() / 4
    v = torch.rand(n, lab, h, w, generator=g)
    return q, k, v


# (C, h, w, N, L, radius, topk, window, unrestricted)
CPU_CASES = [
    (7, 9, 11, 3, 3, 3, 5, "disc", 1),
    (5, 13, 6, 4, 2, 2, 10, "square", 0),
    (3, 4, 5, 3, 1, 12, 10, "disc", 2),  # window larger than the image
    (8, 1, 9, 2, 4, 1, 1, "disc", 0),  # h = 1, radius 1 (own position only), top-1
    (4, 7, 7, 2, 2, 1, 32, "square", 1),  # topk larger than the candidate count
    (6, 6, 5, 5, 3, 2, 4, "disc", 5),  # every frame unrestricted
]


@pytest.mark.parametrize("case", CPU_CASES)
def test_windowed_and_dense_match_reference(case):
    c, h, w, n, lab, radius, topk, window, nu = case
    q, k, v = _inputs(c, h, w, n, lab)
    kw = dict(radius=radius, topk=topk, temperature=0.1, window=window, unrestricted=nu)
    ref = knn_propagate_reference(q, k, v, **kw)
    atol, rtol = tolerance(torch.float32)
    # small tiles and frame chunks exercise the tiling and the merge of per-part top-k lists
    for tile, chunk in ((8, 5), (3, 2)):
        assert_close_verbose(knn_propagate_windowed(q, k, v, tile=tile, frame_chunk=chunk, **kw), ref,
                             atol=atol, rtol=rtol, name=f"windowed tile={tile}")
    assert_close_verbose(knn_propagate_dense(q, k, v, chunk=7, **kw), ref, atol=atol, rtol=rtol, name="dense")
    assert_close_verbose(knn_propagate(q, k, v, **kw), ref, atol=atol, rtol=rtol, name="public (cpu)")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_windowed_low_precision(dtype):
    q, k, v = _inputs(16, 9, 10, 3, 3, dtype=dtype)
    kw = dict(radius=3, topk=10, temperature=0.07, window="square", unrestricted=1)
    ref = knn_propagate_reference(q, k, v, **kw)  # same rounded inputs, float64 inside
    atol, rtol = tolerance(dtype)
    out = knn_propagate(q, k, v, **kw)
    assert out.dtype == torch.float32
    assert_close_verbose(out, ref, atol=atol, rtol=rtol, name=str(dtype))


def test_reference_against_pixel_loop():
    """The reference equals a direct per-pixel enumeration of the candidates (stable on ties)."""
    q, k, v = _exact_inputs(4, 5, 6, 3, 2)
    k[2] = k[1]  # exact duplicate frame with different labels: ties must go to the lower index
    radius, topk, temp = 2, 6, 0.5
    for window, nu in (("disc", 1), ("square", 0)):
        ref = knn_propagate_reference(q, k, v, radius=radius, topk=topk, temperature=temp, window=window, unrestricted=nu)
        n, lab = k.shape[0], v.shape[1]
        h, w = q.shape[1:]
        for y in range(h):
            for x in range(w):
                cands = []
                for f in range(n):
                    for yy in range(h):
                        for xx in range(w):
                            dy, dx = yy - y, xx - x
                            inside = dy * dy + dx * dx < radius**2 if window == "disc" else max(abs(dy), abs(dx)) <= radius
                            if f < nu or inside:
                                s = float((q[:, y, x].double() * k[f, :, yy, xx].double()).sum()) / temp
                                cands.append((-s, (f * h + yy) * w + xx, f, yy, xx))
                cands.sort()
                top = cands[:topk]
                wts = torch.softmax(torch.tensor([-c[0] for c in top], dtype=torch.float64), 0)
                exp = sum(wts[i] * v[f, :, yy, xx].double() for i, (_, _, f, yy, xx) in enumerate(top))
                torch.testing.assert_close(ref[:, y, x].double(), exp, atol=1e-6, rtol=1e-6)
        assert ref.shape == (lab, h, w)


def test_ties_go_to_lower_index():
    """Distinct one-hot features per position, two identical frames with different labels."""
    h, w = 3, 4
    eye = torch.eye(h * w).reshape(h * w, h, w)
    keys = torch.stack([eye, eye])
    values = torch.rand(2, 3, h, w, generator=fresh_generator())
    kw = dict(radius=2, temperature=0.1, window="disc", unrestricted=1)
    for fn in (knn_propagate_reference, knn_propagate_windowed):
        top1 = fn(eye, keys, values, topk=1, **kw)
        torch.testing.assert_close(top1, values[0])  # frame 0 wins the tie
        top2 = fn(eye, keys, values, topk=2, **kw)
        torch.testing.assert_close(top2, values.mean(0))  # both copies of the own position


def test_equal_features_take_lowest_positions():
    """All scores equal: the top-k are the k lowest candidate indices (row-major in frame 0)."""
    h, w, topk = 4, 5, 3
    q = torch.ones(2, h, w)
    keys = torch.ones(2, 2, h, w)
    values = torch.rand(2, 4, h, w, generator=fresh_generator())
    expected = values[0].reshape(4, -1)[:, :topk].mean(1)
    for fn in (knn_propagate_reference, knn_propagate_windowed):
        out = fn(q, keys, values, radius=3, topk=topk, temperature=0.05, window="disc", unrestricted=1)
        torch.testing.assert_close(out, expected[:, None, None].expand(4, h, w))


def test_duplicated_frames_all_paths_agree_exactly():
    q, k, v = _exact_inputs(6, 7, 9, 4, 3)
    k[1] = k[0]
    k[3] = k[0]
    kw = dict(radius=3, topk=10, temperature=0.25, window="disc", unrestricted=1)
    ref = knn_propagate_reference(q, k, v, **kw)
    assert_close_verbose(knn_propagate_windowed(q, k, v, tile=4, frame_chunk=2, **kw), ref, atol=1e-6, rtol=1e-6, name="windowed")


@pytest.mark.parametrize("window, unrestricted, counts, topk", [
    ("disc", 1, [1, 4, 1, 2], 10),  # CRW/DUL early in a video: frame 0 once unrestricted, then repeated
    ("square", 0, [3, 1, 2], 5),  # STT: frame 0 twice and more
    ("disc", 2, [2, 3, 1], 32),  # repeated unrestricted frames, top-k above the candidate count
    ("disc", 0, [5], 4),  # one frame standing for the whole context
])
@pytest.mark.parametrize("exact", [True, False])
def test_counts_equal_repeated_frames(window, unrestricted, counts, topk, exact):
    """Scoring each distinct frame once and repeating its candidates gives exactly what the repeated
    frames give (ties included: exact features make the copies tie with each other and with others)."""
    n = len(counts)
    q, k, v = _exact_inputs(6, 7, 9, n, 3) if exact else _inputs(6, 7, 9, n, 3)
    reps = torch.tensor(counts)
    kw = dict(radius=3, topk=topk, temperature=0.25, window=window)
    expanded_unres = sum(counts[:unrestricted])
    ref = knn_propagate_reference(q, k.repeat_interleave(reps, 0), v.repeat_interleave(reps, 0),
                                  unrestricted=expanded_unres, **kw)
    got = knn_propagate_windowed(q, k, v, unrestricted=unrestricted, counts=counts, tile=4, frame_chunk=2, **kw)
    assert_close_verbose(got, ref, atol=1e-6, rtol=1e-6, name="windowed counts")
    assert_close_verbose(knn_propagate(q, k, v, unrestricted=unrestricted, counts=counts, **kw), ref,
                         atol=1e-6, rtol=1e-6, name="public counts")


@pytest.mark.interpreter
def test_counts_triton_expands(triton_backend):
    q, k, v = _exact_inputs(5, 6, 7, 3, 2)
    counts = [1, 3, 2]
    reps = torch.tensor(counts)
    kw = dict(radius=2, topk=6, temperature=0.25, window="disc")
    ref = knn_propagate_reference(q, k.repeat_interleave(reps, 0), v.repeat_interleave(reps, 0), unrestricted=1, **kw)
    assert_close_verbose(knn_propagate(q, k, v, unrestricted=1, counts=counts, **kw), ref, atol=1e-5, rtol=1e-5)


def test_counts_bad():
    q, k, v = _inputs(4, 5, 5, 3, 2)
    for counts in ([1, 2], [1, 0, 1]):
        with pytest.raises(ValueError, match="counts"):
            knn_propagate(q, k, v, radius=2, topk=3, temperature=0.1, counts=counts)


def test_non_contiguous_inputs_cpu():
    q, k, v = _inputs(6, 8, 7, 3, 2)
    qn = q.transpose(1, 2).contiguous().transpose(1, 2)
    kn = k.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    vn = torch.cat([v, v], dim=1)[:, ::2]
    assert not (qn.is_contiguous() or kn.is_contiguous() or vn.is_contiguous())
    kw = dict(radius=2, topk=5, temperature=0.1, window="square", unrestricted=1)
    assert_close_verbose(knn_propagate(qn, kn, vn, **kw), knn_propagate_reference(q, k, vn.contiguous(), **kw),
                         atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(radius=0), "radius"),
        (dict(radius=33), "radius"),
        (dict(topk=0), "topk"),
        (dict(topk=33), "topk"),
        (dict(window="circle"), "window"),
        (dict(unrestricted=4), "unrestricted"),
        (dict(temperature=0.0), "temperature"),
    ],
)
def test_bad_arguments(change, match):
    q, k, v = _inputs(4, 5, 5, 3, 2)
    kw = dict(radius=2, topk=3, temperature=0.1, window="disc", unrestricted=1)
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        knn_propagate(q, k, v, **kw)


def test_bad_tensors():
    q, k, v = _inputs(4, 5, 5, 3, 2)
    kw = dict(radius=2, topk=3, temperature=0.1)
    with pytest.raises(ValueError, match="keys shape"):
        knn_propagate(q, k[:, :3], v, **kw)
    with pytest.raises(ValueError, match="values shape"):
        knn_propagate(q, k, v[:2], **kw)
    with pytest.raises(TypeError, match="differs from query"):
        knn_propagate(q, k.half(), v, **kw)
    with pytest.raises(TypeError, match="dtype"):
        knn_propagate(q.double(), k.double(), v, **kw)
    with pytest.raises(ValueError, match="L=129"):
        knn_propagate(q, k, torch.rand(3, 129, 5, 5), **kw)
    with pytest.raises(ValueError, match="dimensions"):
        knn_propagate(q[0], k, v, **kw)
    assert knn_propagate(q, k, v, radius=0, topk=3, temperature=0.1, window="square").shape == (2, 5, 5)


def test_opcheck_windowed_op():
    q, k, v = _inputs(5, 6, 7, 3, 2)
    torch.library.opcheck(torch.ops.tritoncorr.knn_propagate_windowed.default, (q, k, v, 2, 4, 0.1, "disc", 1))


def test_torch_compile_fullgraph_cpu():
    q, k, v = _inputs(5, 6, 7, 3, 2)

    def f(q, k, v):
        return knn_propagate(q * 1.0, k, v, radius=2, topk=4, temperature=0.1, window="disc", unrestricted=1) + 0.0

    out = torch.compile(f, fullgraph=True, backend="eager")(q, k, v)
    torch.testing.assert_close(out, knn_propagate_reference(q, k, v, radius=2, topk=4, temperature=0.1), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- Triton kernel (interpreter on CPU)

TRITON_CASES = [
    # (C, h, w, N, L, radius, topk, window, unrestricted, dtype)
    (5, 7, 9, 3, 2, 3, 4, "disc", 1, torch.float32),  # windows cross every border
    (16, 5, 3, 2, 3, 12, 10, "square", 0, torch.float32),  # image smaller than the window
    (3, 6, 11, 2, 17, 1, 32, "square", 1, torch.bfloat16),  # topk > candidates, L > BLOCK_L
    (9, 9, 5, 3, 1, 2, 10, "disc", 2, torch.float16),  # two unrestricted frames, one label
]


@pytest.mark.interpreter
@pytest.mark.parametrize("case", TRITON_CASES)
def test_triton_matches_reference(case, triton_backend):
    c, h, w, n, lab, radius, topk, window, nu, dtype = case
    q, k, v = _inputs(c, h, w, n, lab, dtype=dtype)
    kw = dict(radius=radius, topk=topk, temperature=0.1, window=window, unrestricted=nu)
    out = knn_propagate(q, k, v, **kw)  # routed to the Triton launcher, NaN-poisoned output
    atol, rtol = tolerance(dtype)
    assert out.dtype == torch.float32
    assert_close_verbose(out, knn_propagate_reference(q, k, v, **kw), atol=atol, rtol=rtol, name=f"triton {case}")


@pytest.mark.interpreter
def test_triton_ties_and_non_contiguous(triton_backend):
    q, k, v = _exact_inputs(6, 6, 10, 3, 3)
    k[1] = k[0]  # exact duplicate, different labels: the lower frame index must win
    kw = dict(radius=3, topk=10, temperature=0.25, window="disc", unrestricted=1)
    ref = knn_propagate_reference(q, k, v, **kw)
    qn = q.transpose(1, 2).contiguous().transpose(1, 2)
    kn = k.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    vn = v.transpose(2, 3).contiguous().transpose(2, 3)
    assert_close_verbose(knn_propagate(qn, kn, vn, **kw), ref, atol=1e-6, rtol=1e-6, name="triton ties")


_AOT_SCRIPT = """
import dataclasses, json
from tritoncorr.kernels.aot import compile_report
from tritoncorr.kernels.knn_propagate import AOT_SPECS
print(json.dumps([dataclasses.asdict(r) for r in compile_report(specs=AOT_SPECS)]))
"""


@pytest.mark.aot
def test_aot_specs_compile_without_spills():
    # In a fresh process without TRITON_INTERPRET: under the interpreter (set by conftest on CPU-only
    # machines) the @triton.jit functions are InterpretedFunction objects that cannot be compiled.
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(records) == 2 * len(K.AOT_SPECS)
    for r in records:
        assert not r["error"], f"{r['kernel']} {r['arch']}: {r['error']}"
        assert r["spills"] == 0, f"{r['kernel']} {r['arch']}: {r['spills']} spill bytes ({r['registers']} registers)"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window, nu", [("disc", 1), ("square", 0)])
def test_cuda_triton_matches_reference(dtype, window, nu):
    q, k, v = _inputs(64, 30, 53, 7, 5, dtype=dtype)
    kw = dict(radius=12, topk=10, temperature=0.05, window=window, unrestricted=nu)
    out = knn_propagate(q.cuda(), k.cuda(), v.cuda(), **kw)
    ref = knn_propagate_reference(q, k, v, **kw)
    atol, rtol = tolerance(dtype)
    assert_close_verbose(out.cpu(), ref, atol=atol, rtol=rtol, name=f"cuda {dtype} {window}")
    args = (q.cuda(), k.cuda(), v.cuda(), 12, 10, 0.05, window, nu)
    torch.library.opcheck(torch.ops.tritoncorr.knn_propagate.default, args)


def test_bench_cases_cpu():
    from tritoncorr.bench.core import SkipProvider
    from tritoncorr.bench.knn_propagate import cases, window_candidates

    ys, xs = K._grid(7, 9, "cpu")
    for window in ("disc", "square"):
        assert window_candidates(7, 9, 3, window) == int(K.window_mask(ys, xs, ys, xs, 3, window).sum())
    assert window_candidates(200, 200, 12) > 437 * 150 * 150  # interior queries see the full 437-cell disc
    quick = cases(torch.device("cpu"), quick=True)
    assert len(quick) == 1 and set(quick[0].providers) == {"triton", "torch", "dense"}
    full = cases(torch.device("cpu"), quick=False)
    assert len(full) == 7 and [c.kernel for c in full[-2:]] == ["window_propagate"] * 2
    with pytest.raises(SkipProvider):
        quick[0].providers["triton"]()


# ================================================================ full-window mode (MAST / LIIR, "k = all")


def _raw_inputs(c, h, w, n, lab, *, dtype=torch.float32, seed=None, offset=0.0, onehot=False):
    """Raw (unnormalised) features as MAST/LIIR use them; ``offset`` shifts every feature along one
    common direction (positive logits); ``onehot`` gives one-hot labels."""
    g = fresh_generator(seed)
    q = torch.randn(c, h, w, generator=g)
    k = torch.randn(n, c, h, w, generator=g)
    if offset:
        q[0] += offset
        k[:, 0] += offset
    if onehot:
        v = F.one_hot(torch.randint(0, lab, (n, h, w), generator=g), lab).permute(0, 3, 1, 2).float()
    else:
        v = torch.rand(n, lab, h, w, generator=g)
    return q.to(dtype), k.to(dtype), v


def _spec_window_loop(q, k, v, radius, temperature, compact, threshold):
    """liir.md §4.1, §6.6, §8 transcribed per pixel: zero-border window logits, one softmax over all
    references' windows, per reference the top-M (lower window index on ties), w = softmax of the M
    probabilities, T = sum_m w_m exp(-4 ln2 |u - c_m|^2) on the window, replace where max > threshold."""
    import math

    c, h, w = q.shape
    n, lab = k.shape[0], v.shape[1]
    side = 2 * radius + 1
    qd, kd, vd = q.double(), k.double(), v.double()
    out = torch.zeros(lab, h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            logits, vals = [], []
            for f in range(n):
                for dy in range(-radius, radius + 1):
                    for dx in range(-radius, radius + 1):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w:
                            logits.append(float(qd[:, y, x] @ kd[f, :, yy, xx]) / temperature)
                            vals.append(vd[f, :, yy, xx])
                        else:  # out of the image: logit 0, value 0
                            logits.append(0.0)
                            vals.append(torch.zeros(lab, dtype=torch.float64))
            a = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0).view(n, side * side)
            for f in range(n):
                af = a[f]
                if compact:
                    order = sorted(range(side * side), key=lambda i: (-af[i].item(), i))[:compact]
                    if max(af[i].item() for i in order) > threshold:
                        wts = torch.softmax(torch.stack([af[i] for i in order]), 0)
                        tmpl = torch.zeros(side * side, dtype=torch.float64)
                        for wt, ci in zip(wts, order):
                            for i in range(side * side):
                                d2 = (i // side - ci // side) ** 2 + (i % side - ci % side) ** 2
                                tmpl[i] += wt * math.exp(-4 * math.log(2) * d2)
                        af = tmpl
                for i in range(side * side):
                    out[:, y, x] += af[i] * vals[f * side * side + i]
    return out.float()


# (C, h, w, N, L, radius, compact, temperature)
WINDOW_CASES = [
    (7, 9, 11, 3, 3, 3, 0, 1.0),
    (5, 13, 6, 5, 2, 2, 2, 1.0),  # five references (MAST/LIIR's set), odd sizes
    (4, 4, 5, 2, 3, 6, 2, 1.0),  # window larger than the image: most cells are out of the image
    (6, 7, 7, 2, 1, 1, 3, 2.0),  # M = 3, one label, temperature != 1
    (3, 1, 9, 2, 4, 2, 1, 1.0),  # h = 1, M = 1
    (4, 6, 7, 1, 3, 2, 2, 1.0),  # one reference
    (8, 6, 5, 3, 2, 0, 0, 1.0),  # radius 0: the own position only
]


def test_window_reference_against_spec_loop():
    for case in ((4, 4, 5, 2, 3, 2, 2, 1.0), (3, 3, 4, 3, 2, 1, 3, 0.7), (5, 5, 3, 2, 2, 2, 0, 1.0)):
        c, h, w, n, lab, r, m, temp = case
        q, k, v = _raw_inputs(c, h, w, n, lab)
        ref = window_propagate_reference(q, k, v, radius=r, temperature=temp, compact=m, compact_threshold=0.1)
        assert_close_verbose(ref, _spec_window_loop(q, k, v, r, temp, m, 0.1), atol=1e-6, rtol=1e-6, name=f"loop {case}")


def _mixed_threshold(q, k, radius, temperature):
    """A compactness threshold halfway between two neighbouring per-reference max probabilities near
    their median: about half of the (reference, pixel) slices are replaced, half kept, none is close
    to the threshold."""
    c, h, w = q.shape
    side = 2 * radius + 1
    logits = torch.cat([(q.double().reshape(c, 1, -1) * F.unfold(k[i : i + 1].double(), side, padding=radius)
                         .reshape(c, side * side, -1)).sum(0) / temperature for i in range(k.shape[0])])
    top = torch.softmax(logits, 0).reshape(k.shape[0], side * side, -1).amax(1).flatten().sort().values
    i = len(top) // 2
    return float((top[i - 1] + top[i]) / 2) if len(top) > 1 else 0.1


@pytest.mark.parametrize("case", WINDOW_CASES)
def test_window_windowed_matches_reference(case):
    c, h, w, n, lab, r, m, temp = case
    q, k, v = _raw_inputs(c, h, w, n, lab)
    kw = dict(radius=r, temperature=temp, compact=m, compact_threshold=_mixed_threshold(q, k, r, temp))
    ref = window_propagate_reference(q, k, v, **kw)
    atol, rtol = tolerance(torch.float32)
    for tile in (16, 4, 3):  # tiles crossing the borders in every way
        assert_close_verbose(window_propagate_windowed(q, k, v, tile=tile, **kw), ref, atol=atol, rtol=rtol, name=f"tile {tile}")
    assert_close_verbose(window_propagate(q, k, v, **kw), ref, atol=atol, rtol=rtol, name="public (cpu)")
    if m:  # the rule is exercised: some references replaced, not all (else the case tests nothing)
        soft = window_propagate_reference(q, k, v, **{**kw, "compact": 0})
        changed = ((ref - soft).abs() > 1e-4).any(0)
        assert changed.any(), "the compactness rule never fired"
        if n == 1:
            assert not changed.all(), "the compactness rule fired everywhere"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_window_windowed_low_precision(dtype):
    q, k, v = _raw_inputs(16, 9, 10, 5, 3, dtype=dtype)
    kw = dict(radius=3, compact=2)
    out = window_propagate(q, k, v, **kw)
    assert out.dtype == torch.float32
    atol, rtol = tolerance(dtype)
    assert_close_verbose(out, window_propagate_reference(q, k, v, **kw), atol=atol, rtol=rtol, name=str(dtype))


def test_window_zero_border_semantics():
    """Out-of-image cells take part with logit 0 and value 0 (not masked): zero features give a
    uniform softmax over all N * P^2 window cells, in-image or not."""
    h, w, r, n = 3, 4, 2, 2
    q = torch.zeros(3, h, w)
    k = torch.zeros(n, 3, h, w)
    v = torch.ones(n, 1, h, w)
    ys, xs = torch.arange(h)[:, None], torch.arange(w)[None, :]
    inside = ((ys + torch.arange(-r, r + 1).view(-1, 1, 1)).clamp(0, h - 1) == ys + torch.arange(-r, r + 1).view(-1, 1, 1))
    rows = inside.sum(0)  # (h, 1) in-image window rows
    cols = ((xs + torch.arange(-r, r + 1).view(-1, 1, 1)).clamp(0, w - 1) == xs + torch.arange(-r, r + 1).view(-1, 1, 1)).sum(0)
    expected = (rows * cols).float()[None] / (2 * r + 1) ** 2  # fraction of in-image cells
    for fn in (window_propagate_reference, window_propagate_windowed):
        torch.testing.assert_close(fn(q, k, v, radius=r), expected.expand(1, h, w))


def test_window_compact_phantom_ties_lowest_index():
    """All in-image logits very negative: the logit-0 out-of-image cells carry the mass and tie.
    h = 1, w = 3, r = 1, query x = 0: 7 of the 9 cells are outside, each with probability 1/7 > 0.1,
    so the slice is replaced; the top-2 are the two lowest window indices (dy=-1, dx=-1) and
    (dy=-1, dx=0), w = (1/2, 1/2), and only the Gaussians' tails reach the two in-image cells."""
    q = torch.ones(2, 1, 3)
    k = -10 * torch.ones(1, 2, 1, 3)
    v = torch.rand(1, 2, 1, 3, generator=fresh_generator())
    g = lambda d2: 2.0 ** (-4 * d2)  # noqa: E731  exp(-4 ln2 d^2)
    own = 0.5 * (g(2) + g(1))  # the query cell (dy=0, dx=0): distances^2 2 and 1 to the centres
    right = 0.5 * (g(5) + g(2))  # (dy=0, dx=+1)
    expected0 = own * v[0, :, 0, 0] + right * v[0, :, 0, 1]
    for fn in (window_propagate_reference, window_propagate_windowed):
        out = fn(q, k, v, radius=1, compact=2, compact_threshold=0.1)
        torch.testing.assert_close(out[:, 0, 0], expected0, atol=1e-6, rtol=1e-6)


def test_window_bad_arguments():
    q, k, v = _raw_inputs(4, 5, 5, 3, 2)
    for change, exc, match in [
        (dict(radius=33), ValueError, "radius"),
        (dict(radius=-1), ValueError, "radius"),
        (dict(radius=1.0), TypeError, "radius"),
        (dict(compact=4), ValueError, "compact"),
        (dict(radius=0, compact=2), ValueError, "window cells"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(compact_threshold=float("nan")), ValueError, "compact_threshold"),
    ]:
        kw = dict(radius=2)
        kw.update(change)
        with pytest.raises(exc, match=match):
            window_propagate(q, k, v, **kw)
    with pytest.raises(ValueError, match="L=65"):
        window_propagate(q, k, torch.rand(3, 65, 5, 5), radius=2)
    with pytest.raises(ValueError, match="values shape"):
        window_propagate(q, k, v[:2], radius=2)


def test_window_opcheck_windowed_op():
    q, k, v = _raw_inputs(5, 6, 7, 3, 2)
    torch.library.opcheck(torch.ops.tritoncorr.window_propagate_windowed.default, (q, k, v, 2, 1.0, 2, 0.1))


WINDOW_TRITON_CASES = [
    # (C, h, w, N, L, radius, compact, dtype): one or two 4 x 8 tiles (the interpreter is slow)
    (5, 5, 9, 3, 3, 2, 0, torch.float32),  # two tiles, windows cross every border
    (6, 4, 7, 3, 2, 3, 2, torch.float32),  # LIIR's M = 2
    (16, 3, 8, 2, 17, 1, 3, torch.bfloat16),  # M = 3, L > 16 (BLOCK_L 32)
    (9, 4, 5, 2, 1, 5, 1, torch.float16),  # window larger than the image, M = 1
]


@pytest.mark.interpreter
@pytest.mark.parametrize("case", WINDOW_TRITON_CASES)
def test_window_triton_matches_reference(case, triton_backend):
    c, h, w, n, lab, r, m, dtype = case
    q, k, v = _raw_inputs(c, h, w, n, lab, dtype=dtype)
    kw = dict(radius=r, compact=m, compact_threshold=_mixed_threshold(q, k, r, 1.0))
    out = window_propagate(q, k, v, **kw)  # routed to the Triton launcher, NaN-poisoned output
    assert out.dtype == torch.float32
    atol, rtol = tolerance(dtype)
    assert_close_verbose(out, window_propagate_reference(q, k, v, **kw), atol=atol, rtol=rtol, name=f"triton {case}")


@pytest.mark.interpreter
def test_window_triton_phantom_ties_and_non_contiguous(triton_backend):
    q = torch.ones(2, 1, 3)
    k = -10 * torch.ones(1, 2, 1, 3)
    v = torch.rand(1, 2, 1, 3, generator=fresh_generator())
    kw = dict(radius=1, compact=2, compact_threshold=0.1)
    assert_close_verbose(window_propagate(q, k, v, **kw), window_propagate_reference(q, k, v, **kw),
                         atol=1e-6, rtol=1e-6, name="phantom ties")
    q, k, v = _raw_inputs(4, 4, 6, 2, 2)
    qn = q.transpose(1, 2).contiguous().transpose(1, 2)
    kn = k.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    vn = v.transpose(2, 3).contiguous().transpose(2, 3)
    kw = dict(radius=2, compact=2, compact_threshold=0.1)
    assert_close_verbose(window_propagate(qn, kn, vn, **kw), window_propagate_reference(q, k, v, **kw),
                         atol=1e-4, rtol=1e-4, name="non-contiguous")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("compact", [0, 2])
def test_cuda_window_triton_matches_reference(dtype, compact):
    q, k, v = _raw_inputs(64, 30, 53, 5, 5, dtype=dtype, onehot=True)
    q, k = q / 4, k / 4  # logits of a few units, like trained MAST/LIIR features
    kw = dict(radius=14, compact=compact, compact_threshold=0.1)
    out = window_propagate(q.cuda(), k.cuda(), v.cuda(), **kw)
    ref = window_propagate_windowed(q, k, v, **kw)
    atol, rtol = tolerance(dtype)
    assert_close_verbose(out.cpu(), ref, atol=atol, rtol=rtol, name=f"cuda {dtype} M{compact}")
    torch.library.opcheck(torch.ops.tritoncorr.window_propagate.default, (q.cuda(), k.cuda(), v.cuda(), 14, 1.0, compact, 0.1))
