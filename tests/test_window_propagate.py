"""Full-window ("k = all", MAST / LIIR) propagation: reference, tiled PyTorch path and Triton kernel."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from tritoncorr.kernels.window_propagate import (
    WindowSearch,
    window_propagate,
    window_propagate_reference,
    window_propagate_windowed,
)

from tests.kernel_harness import (
    assert_close_verbose,
    check_aot_family,
    check_op_settings,
    fresh_generator,
    tolerance,
)


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
        ref = window_propagate_reference(q, k, v, WindowSearch(r, temperature=temp, compact=m, compact_threshold=0.1))
        assert_close_verbose(
            ref, _spec_window_loop(q, k, v, r, temp, m, 0.1), atol=1e-6, rtol=1e-6, name=f"loop {case}"
        )


def _mixed_threshold(q, k, radius, temperature):
    """A compactness threshold in the widest gap between neighbouring per-reference max probabilities
    of the middle half: a quarter to three quarters of the (reference, pixel) slices are replaced, and
    none lies near the threshold (a narrow gap could put fp32 and float64 on different sides of it)."""
    c, h, w = q.shape
    side = 2 * radius + 1
    logits = torch.cat(
        [
            (
                q.double().reshape(c, 1, -1)
                * F.unfold(k[i : i + 1].double(), side, padding=radius).reshape(c, side * side, -1)
            ).sum(0)
            / temperature
            for i in range(k.shape[0])
        ]
    )
    top = torch.softmax(logits, 0).reshape(k.shape[0], side * side, -1).amax(1).flatten().sort().values
    if len(top) < 2:
        return 0.1
    lo, hi = max(1, len(top) // 4), max(2, 3 * len(top) // 4)
    i = lo + int(torch.argmax(top[lo:hi] - top[lo - 1 : hi - 1]))
    return float((top[i - 1] + top[i]) / 2)


@pytest.mark.parametrize("case", WINDOW_CASES)
def test_window_windowed_matches_reference(case):
    c, h, w, n, lab, r, m, temp = case
    q, k, v = _raw_inputs(c, h, w, n, lab)
    kw = dict(radius=r, temperature=temp, compact=m, compact_threshold=_mixed_threshold(q, k, r, temp))
    search = WindowSearch(**kw)
    ref = window_propagate_reference(q, k, v, search)
    atol, rtol = tolerance(torch.float32)
    for tile in (16, 4, 3):  # tiles crossing the borders in every way
        assert_close_verbose(
            window_propagate_windowed(q, k, v, search, tile=tile), ref, atol=atol, rtol=rtol, name=f"tile {tile}"
        )
    assert_close_verbose(window_propagate(q, k, v, **kw), ref, atol=atol, rtol=rtol, name="public (cpu)")
    if m:  # the rule is exercised: some references replaced, not all (else the case tests nothing)
        soft = window_propagate_reference(q, k, v, dataclasses.replace(search, compact=0))
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
    ref = window_propagate_reference(q, k, v, WindowSearch(**kw))
    assert_close_verbose(out, ref, atol=atol, rtol=rtol, name=str(dtype))


def test_window_zero_border_semantics():
    """Out-of-image cells take part with logit 0 and value 0 (not masked): zero features give a
    uniform softmax over all N * P^2 window cells, in-image or not."""
    h, w, r, n = 3, 4, 2, 2
    q = torch.zeros(3, h, w)
    k = torch.zeros(n, 3, h, w)
    v = torch.ones(n, 1, h, w)
    ys, xs = torch.arange(h)[:, None], torch.arange(w)[None, :]
    inside = (ys + torch.arange(-r, r + 1).view(-1, 1, 1)).clamp(0, h - 1) == ys + torch.arange(-r, r + 1).view(
        -1, 1, 1
    )
    rows = inside.sum(0)  # (h, 1) in-image window rows
    cols = (
        (xs + torch.arange(-r, r + 1).view(-1, 1, 1)).clamp(0, w - 1) == xs + torch.arange(-r, r + 1).view(-1, 1, 1)
    ).sum(0)
    expected = (rows * cols).float()[None] / (2 * r + 1) ** 2  # fraction of in-image cells
    for fn in (window_propagate_reference, window_propagate_windowed):
        torch.testing.assert_close(fn(q, k, v, WindowSearch(radius=r)), expected.expand(1, h, w))


def _phantom_tie_inputs():
    """q (2, 1, 3), k, v for one reference frame: all in-image logits very negative, so the logit-0 out-of-image
    cells carry the mass and tie (with radius 1)."""
    q = torch.ones(2, 1, 3)
    k = -10 * torch.ones(1, 2, 1, 3)
    v = torch.rand(1, 2, 1, 3, generator=fresh_generator())
    return q, k, v


def test_window_compact_phantom_ties_lowest_index():
    """All in-image logits very negative: the logit-0 out-of-image cells carry the mass and tie.
    h = 1, w = 3, r = 1, query x = 0: 7 of the 9 cells are outside, each with probability 1/7 > 0.1,
    so the slice is replaced; the top-2 are the two lowest window indices (dy=-1, dx=-1) and
    (dy=-1, dx=0), w = (1/2, 1/2), and only the Gaussians' tails reach the two in-image cells."""
    q, k, v = _phantom_tie_inputs()
    g = lambda d2: 2.0 ** (-4 * d2)  # noqa: E731  exp(-4 ln2 d^2)
    own = 0.5 * (g(2) + g(1))  # the query cell (dy=0, dx=0): distances^2 2 and 1 to the centres
    right = 0.5 * (g(5) + g(2))  # (dy=0, dx=+1)
    expected0 = own * v[0, :, 0, 0] + right * v[0, :, 0, 1]
    for fn in (window_propagate_reference, window_propagate_windowed):
        out = fn(q, k, v, WindowSearch(radius=1, compact=2, compact_threshold=0.1))
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


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(radius=33), ValueError, "radius=33 must be in 0..32"),
        (dict(radius=1.0), TypeError, "radius must be an int"),
        (dict(compact=-1), ValueError, "compact=-1 must be in 0..3"),
        (dict(radius=0, compact=2), ValueError, "compact=2 Gaussians need at least as many window cells"),
        (dict(temperature=-1.0), ValueError, "temperature=-1.0 must be a finite number > 0"),
        (dict(compact_threshold=float("inf")), ValueError, "compact_threshold=inf must be a finite number"),
    ],
)
def test_window_search_settings_checked_when_built(change, exc, match):
    kw = dict(radius=2)
    kw.update(change)
    with pytest.raises(exc, match=match):
        WindowSearch(**kw)


def test_window_search_defaults_and_tensor_check():
    search = WindowSearch(radius=3, temperature=2, compact_threshold=1)
    assert search.op_args() == (3, 2.0, 0, 1.0) and search.side == 7
    assert isinstance(search.temperature, float) and isinstance(search.compact_threshold, float)
    q, k, v = _raw_inputs(4, 5, 5, 3, 2)
    with pytest.raises(ValueError, match="values shape"):
        search.check(q, k, v[:2])
    for fn in (window_propagate_reference, window_propagate_windowed):
        with pytest.raises(ValueError, match="values shape"):
            fn(q, k, v[:2], search)


def test_window_op_settings_are_the_search_fields():
    check_op_settings("window_propagate", WindowSearch)


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
    ref = window_propagate_reference(q, k, v, WindowSearch(**kw))
    assert_close_verbose(out, ref, atol=atol, rtol=rtol, name=f"triton {case}")


def _phantom_ties():
    """(kernel inputs, reference inputs, keyword arguments, tolerance): the phantom-tie inputs."""
    q, k, v = _phantom_tie_inputs()
    return (q, k, v), (q, k, v), dict(radius=1, compact=2, compact_threshold=0.1), 1e-6


def _non_contiguous():
    """As ``_phantom_ties``: non-contiguous copies of random inputs for the kernel, the inputs for the reference."""
    q, k, v = _raw_inputs(4, 4, 6, 2, 2)
    qn = q.transpose(1, 2).contiguous().transpose(1, 2)
    kn = k.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    vn = v.transpose(2, 3).contiguous().transpose(2, 3)
    return (qn, kn, vn), (q, k, v), dict(radius=2, compact=2, compact_threshold=0.1), 1e-4


@pytest.mark.interpreter
@pytest.mark.parametrize("case", [_phantom_ties, _non_contiguous], ids=["phantom-ties", "non-contiguous"])
def test_window_triton_phantom_ties_and_non_contiguous(case, triton_backend):
    inputs, ref_inputs, kw, tol = case()
    out = window_propagate(*inputs, **kw)
    ref = window_propagate_reference(*ref_inputs, WindowSearch(**kw))
    assert_close_verbose(out, ref, atol=tol, rtol=tol, name=case.__name__)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("compact", [0, 2])
def test_cuda_window_triton_matches_reference(dtype, compact):
    q, k, v = _raw_inputs(64, 30, 53, 5, 5, dtype=dtype, onehot=True)
    q, k = q / 4, k / 4  # logits of a few units, like trained MAST/LIIR features
    kw = dict(radius=14, compact=compact, compact_threshold=0.1)
    out = window_propagate(q.cuda(), k.cuda(), v.cuda(), **kw)
    ref = window_propagate_windowed(q, k, v, WindowSearch(**kw))
    atol, rtol = tolerance(dtype)
    assert_close_verbose(out.cpu(), ref, atol=atol, rtol=rtol, name=f"cuda {dtype} M{compact}")
    torch.library.opcheck(
        torch.ops.tritoncorr.window_propagate.default, (q.cuda(), k.cuda(), v.cuda(), 14, 1.0, compact, 0.1)
    )


@pytest.mark.aot
def test_window_aot_specs_compile_without_spills_with_tensor_cores():
    check_aot_family("window_propagate")
