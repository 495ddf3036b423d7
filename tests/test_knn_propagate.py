"""kNN-softmax propagation: reference, windowed PyTorch path, CRW-style dense path and Triton kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tritoncorr.kernels.knn_propagate import (
    KnnSearch,
    knn_propagate,
    knn_propagate_dense,
    knn_propagate_reference,
    knn_propagate_windowed,
    window_mask,
)
from tritoncorr.kernels.knn_propagate.reference import grid

from tests.kernel_harness import (
    assert_close_verbose,
    check_aot_family,
    check_op_settings,
    fresh_generator,
    tolerance,
)


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
    search = KnnSearch(**kw)
    ref = knn_propagate_reference(q, k, v, search)
    atol, rtol = tolerance(torch.float32)
    # small tiles and frame chunks exercise the tiling and the merge of per-part top-k lists
    for tile, chunk in ((8, 5), (3, 2)):
        assert_close_verbose(
            knn_propagate_windowed(q, k, v, search, tile=tile, frame_chunk=chunk),
            ref,
            atol=atol,
            rtol=rtol,
            name=f"windowed tile={tile}",
        )
    assert_close_verbose(knn_propagate_dense(q, k, v, search, chunk=7), ref, atol=atol, rtol=rtol, name="dense")
    assert_close_verbose(knn_propagate(q, k, v, **kw), ref, atol=atol, rtol=rtol, name="public (cpu)")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_windowed_low_precision(dtype):
    q, k, v = _inputs(16, 9, 10, 3, 3, dtype=dtype)
    kw = dict(radius=3, topk=10, temperature=0.07, window="square", unrestricted=1)
    ref = knn_propagate_reference(q, k, v, KnnSearch(**kw))  # same rounded inputs, float64 inside
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
        ref = knn_propagate_reference(q, k, v, KnnSearch(radius, topk, temp, window, nu))
        n, lab = k.shape[0], v.shape[1]
        h, w = q.shape[1:]
        for y in range(h):
            for x in range(w):
                cands = []
                for f in range(n):
                    for yy in range(h):
                        for xx in range(w):
                            dy, dx = yy - y, xx - x
                            inside = (
                                dy * dy + dx * dx < radius**2 if window == "disc" else max(abs(dy), abs(dx)) <= radius
                            )
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
        top1 = fn(eye, keys, values, KnnSearch(topk=1, **kw))
        torch.testing.assert_close(top1, values[0])  # frame 0 wins the tie
        top2 = fn(eye, keys, values, KnnSearch(topk=2, **kw))
        torch.testing.assert_close(top2, values.mean(0))  # both copies of the own position


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_lowest_index_selects_what_a_stable_sort_selects(dtype):
    """Scores with few distinct values (as 16-bit features give): the top-k set is the first k of a
    stable descending sort (ties at the k-th value go to the lower columns), and the rows that tie at
    the boundary come out in exactly the sort's order. -inf entries (masked candidates) included."""
    from tritoncorr.kernels._utils import _lowest_index_among_ties, topk_lowest_index

    g = fresh_generator()
    for _ in range(60):
        rows, cols = int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(2, 200, (1,), generator=g))
        k = int(torch.randint(1, cols, (1,), generator=g))
        scores = torch.randint(0, int(torch.randint(1, 6, (1,), generator=g)), (rows, cols), generator=g).to(dtype)
        scores[torch.rand(rows, cols, generator=g) < 0.2] = float("-inf")
        expected = torch.sort(scores, dim=1, descending=True, stable=True)
        values, index = topk_lowest_index(scores, k)
        finite = torch.isfinite(expected.values[:, :k])
        for r in range(rows):  # the same candidates (the order inside the top-k does not matter)
            got = index[r][torch.isfinite(values[r])].sort().values
            torch.testing.assert_close(got, expected.indices[r, :k][finite[r]].sort().values, rtol=0, atol=0)
        tied = torch.isfinite(expected.values[:, k - 1])
        if tied.any():
            v, i = _lowest_index_among_ties(scores[tied], expected.values[tied, k - 1], k)
            torch.testing.assert_close(i, expected.indices[tied, :k], rtol=0, atol=0)
            torch.testing.assert_close(v, expected.values[tied, :k], rtol=0, atol=0)


def test_equal_features_take_lowest_positions():
    """All scores equal: the top-k are the k lowest candidate indices (row-major in frame 0)."""
    h, w, topk = 4, 5, 3
    q = torch.ones(2, h, w)
    keys = torch.ones(2, 2, h, w)
    values = torch.rand(2, 4, h, w, generator=fresh_generator())
    expected = values[0].reshape(4, -1)[:, :topk].mean(1)
    for fn in (knn_propagate_reference, knn_propagate_windowed):
        out = fn(q, keys, values, KnnSearch(radius=3, topk=topk, temperature=0.05, window="disc", unrestricted=1))
        torch.testing.assert_close(out, expected[:, None, None].expand(4, h, w))


def test_duplicated_frames_all_paths_agree_exactly():
    q, k, v = _exact_inputs(6, 7, 9, 4, 3)
    k[1] = k[0]
    k[3] = k[0]
    search = KnnSearch(radius=3, topk=10, temperature=0.25, window="disc", unrestricted=1)
    ref = knn_propagate_reference(q, k, v, search)
    assert_close_verbose(
        knn_propagate_windowed(q, k, v, search, tile=4, frame_chunk=2), ref, atol=1e-6, rtol=1e-6, name="windowed"
    )


@pytest.mark.parametrize(
    "window, unrestricted, counts, topk",
    [
        ("disc", 1, [1, 4, 1, 2], 10),  # CRW/DUL early in a video: frame 0 once unrestricted, then repeated
        ("square", 0, [3, 1, 2], 5),  # STT: frame 0 twice and more
        ("disc", 2, [2, 3, 1], 32),  # repeated unrestricted frames, top-k above the candidate count
        ("disc", 0, [5], 4),  # one frame standing for the whole context
    ],
)
@pytest.mark.parametrize("exact", [True, False])
def test_counts_equal_repeated_frames(window, unrestricted, counts, topk, exact):
    """Scoring each distinct frame once and repeating its candidates gives exactly what the repeated
    frames give (ties included: exact features make the copies tie with each other and with others)."""
    n = len(counts)
    q, k, v = _exact_inputs(6, 7, 9, n, 3) if exact else _inputs(6, 7, 9, n, 3)
    reps = torch.tensor(counts)
    kw = dict(radius=3, topk=topk, temperature=0.25, window=window)
    expanded_unres = sum(counts[:unrestricted])
    ref = knn_propagate_reference(
        q, k.repeat_interleave(reps, 0), v.repeat_interleave(reps, 0), KnnSearch(unrestricted=expanded_unres, **kw)
    )
    search = KnnSearch(unrestricted=unrestricted, **kw)
    got = knn_propagate_windowed(q, k, v, search, counts=counts, tile=4, frame_chunk=2)
    assert_close_verbose(got, ref, atol=1e-6, rtol=1e-6, name="windowed counts")
    assert_close_verbose(
        knn_propagate(q, k, v, unrestricted=unrestricted, counts=counts, **kw),
        ref,
        atol=1e-6,
        rtol=1e-6,
        name="public counts",
    )


@pytest.mark.interpreter
def test_counts_triton_expands(triton_backend):
    q, k, v = _exact_inputs(5, 6, 7, 3, 2)
    counts = [1, 3, 2]
    reps = torch.tensor(counts)
    kw = dict(radius=2, topk=6, temperature=0.25, window="disc")
    ref = knn_propagate_reference(
        q, k.repeat_interleave(reps, 0), v.repeat_interleave(reps, 0), KnnSearch(unrestricted=1, **kw)
    )
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
    assert_close_verbose(
        knn_propagate(qn, kn, vn, **kw),
        knn_propagate_reference(q, k, vn.contiguous(), KnnSearch(**kw)),
        atol=1e-5,
        rtol=1e-5,
    )


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


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(radius=0), ValueError, "radius=0 must be in 1..32 for window='disc'"),
        (dict(radius=-1, window="square"), ValueError, "radius=-1 must be in 0..32 for window='square'"),
        (dict(radius=2.0), TypeError, "radius must be an int"),
        (dict(topk=33), ValueError, "topk=33 must be in 1..32"),
        (dict(window="circle"), ValueError, "window='circle' must be one of"),
        (dict(temperature=float("nan")), ValueError, "temperature=nan must be a finite number > 0"),
        (dict(unrestricted=-1), ValueError, "unrestricted=-1 must be >= 0"),
    ],
)
def test_search_settings_checked_when_built(change, exc, match):
    kw = dict(radius=2, topk=3, temperature=0.1)
    kw.update(change)
    with pytest.raises(exc, match=match):
        KnnSearch(**kw)


def test_search_check_against_the_tensors():
    q, k, v = _inputs(4, 5, 5, 3, 2)
    search = KnnSearch(radius=2, topk=3, temperature=1, unrestricted=4)  # fine until N (3) is known
    assert search.temperature == 1.0 and isinstance(search.temperature, float)
    assert search.op_args() == (2, 3, 1.0, "disc", 4)
    too_many = r"unrestricted=4 must be in 0\.\.3 \(N"
    with pytest.raises(ValueError, match=too_many):
        search.check(q, k, v)
    for fn in (knn_propagate_reference, knn_propagate_windowed, knn_propagate_dense):
        with pytest.raises(ValueError, match=too_many):
            fn(q, k, v, search)


def test_op_settings_are_the_search_fields():
    check_op_settings("knn_propagate", KnnSearch)


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
    torch.testing.assert_close(
        out, knn_propagate_reference(q, k, v, KnnSearch(radius=2, topk=4, temperature=0.1)), atol=1e-5, rtol=1e-5
    )


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
    ref = knn_propagate_reference(q, k, v, KnnSearch(**kw))
    assert_close_verbose(out, ref, atol=atol, rtol=rtol, name=f"triton {case}")


@pytest.mark.interpreter
def test_triton_ties_and_non_contiguous(triton_backend):
    q, k, v = _exact_inputs(6, 6, 10, 3, 3)
    k[1] = k[0]  # exact duplicate, different labels: the lower frame index must win
    kw = dict(radius=3, topk=10, temperature=0.25, window="disc", unrestricted=1)
    ref = knn_propagate_reference(q, k, v, KnnSearch(**kw))
    qn = q.transpose(1, 2).contiguous().transpose(1, 2)
    kn = k.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    vn = v.transpose(2, 3).contiguous().transpose(2, 3)
    assert_close_verbose(knn_propagate(qn, kn, vn, **kw), ref, atol=1e-6, rtol=1e-6, name="triton ties")


@pytest.mark.aot
def test_aot_specs_compile_without_spills_with_tensor_cores():
    check_aot_family("knn_propagate")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window, nu", [("disc", 1), ("square", 0)])
def test_cuda_triton_matches_reference(dtype, window, nu):
    q, k, v = _inputs(64, 30, 53, 7, 5, dtype=dtype)
    kw = dict(radius=12, topk=10, temperature=0.05, window=window, unrestricted=nu)
    out = knn_propagate(q.cuda(), k.cuda(), v.cuda(), **kw)
    ref = knn_propagate_reference(q, k, v, KnnSearch(**kw))
    atol, rtol = tolerance(dtype)
    assert_close_verbose(out.cpu(), ref, atol=atol, rtol=rtol, name=f"cuda {dtype} {window}")
    args = (q.cuda(), k.cuda(), v.cuda(), 12, 10, 0.05, window, nu)
    torch.library.opcheck(torch.ops.tritoncorr.knn_propagate.default, args)


def test_bench_cases_cpu():
    from tritoncorr.bench.core import SkipProvider
    from tritoncorr.bench.knn_propagate import cases, window_candidates

    ys, xs = grid(7, 9, "cpu")
    for window in ("disc", "square"):
        assert window_candidates(7, 9, 3, window) == int(window_mask(ys, xs, ys, xs, 3, window).sum())
    assert window_candidates(200, 200, 12) > 437 * 150 * 150  # interior queries see the full 437-cell disc
    quick = cases(torch.device("cpu"), quick=True)
    assert len(quick) == 1 and set(quick[0].providers) == {"triton", "torch", "dense"}
    full = cases(torch.device("cpu"), quick=False)
    assert len(full) == 7 and [c.kernel for c in full[-2:]] == ["window_propagate"] * 2
    with pytest.raises(SkipProvider):
        quick[0].providers["triton"]()
