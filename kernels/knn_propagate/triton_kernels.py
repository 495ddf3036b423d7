"""Triton kernel of kNN-softmax propagation, its launcher, the ``tritoncorr::knn_propagate`` op and AOT specs.

Imported only when the kernel is launched (CUDA tensors, or ``TRITONCORR_BACKEND=triton`` under
``TRITON_INTERPRET=1``) or compiled ahead of time; importing it registers the ``triton_op``.

Kernel: per program an 8 x 8 tile of query pixels for 16-bit features (64 rows: the M of a Hopper
``wgmma``; 4 x 8 for fp32 features),
``tl.dot`` over channel blocks against blocks of candidates (fp32 accumulation; bf16/fp16 features
as they come, fp32 through 3xTF32), a running top-k in registers, then the softmax and the label
gather; the affinity is never written to memory.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import triton
import triton.language as tl

from .._triton_utils import (
    PROPAGATION_TILE,
    aot_spec,
    feature_block_c,
    feature_precision,
    merge_topk,
    pixel_ptrs,
    propagation_args,
    propagation_grid,
    query_tile,
    tile_scores,
)
from .._utils import alloc_output, autotune_enabled, next_power_of_2, upcast_bf16_dot
from .reference import KnnSearch

__all__ = ["aot_specs", "launch", "run"]


@triton.jit
def _knn_propagate_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    H,
    W,
    C,
    L,
    N,
    NU,
    RADIUS,
    REACH,
    inv_t,
    s_qc,
    s_qy,
    s_qx,
    s_kn,
    s_kc,
    s_ky,
    s_kx,
    s_vn,
    s_vl,
    s_vy,
    s_vx,
    s_ol,
    s_oy,
    s_ox,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
    KP: tl.constexpr,
    TOPK: tl.constexpr,
    SQUARE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One program = one TILE_H x TILE_W tile of query pixels; writes out[:, tile] (L, TILE_H, TILE_W)."""
    BLOCK_Q: tl.constexpr = TILE_H * TILE_W
    ty0, tx0, qy, qx, qvalid = query_tile(H, W, TILE_H, TILE_W)
    inv_t = tl.cast(inv_t, tl.float32)
    HW = H * W

    q_base = pixel_ptrs(q_ptr, qy, qx, s_qy, s_qx)
    offs_k = tl.arange(0, BLOCK_K)

    slot = tl.arange(0, KP)
    # running top-k: empty slots are -inf with distinct negative ids; padding slots (>= TOPK) are +inf
    tv = tl.where(slot < TOPK, float("-inf"), float("inf"))[None, :] + tl.zeros((BLOCK_Q, KP), tl.float32)
    ti = (-1 - slot)[None, :] + tl.zeros((BLOCK_Q, KP), tl.int32)

    # unrestricted frames: every position
    for fr in range(0, NU):
        k_frame = k_ptr + tl.cast(fr, tl.int64) * s_kn  # frame fr's channel 0
        for p0 in range(0, HW, BLOCK_K):
            kp = p0 + offs_k
            kvalid = kp < HW
            ky = kp // W
            kx = kp % W
            k_base = pixel_ptrs(k_frame, ky, kx, s_ky, s_kx)
            s = tile_scores(q_base, qvalid, k_base, kvalid, C, s_qc, s_kc, inv_t, BLOCK_C, INPUT_PRECISION, UPCAST)
            ok = qvalid[:, None] & kvalid[None, :]
            s = tl.where(ok, s, float("-inf"))
            cand = (fr * HW + kp)[None, :]
            tv, ti = merge_topk(s, cand, tv, ti)

    # restricted frames: the rectangle covering the windows of the whole tile
    ry0 = tl.maximum(ty0 - REACH, 0)
    ry1 = tl.minimum(ty0 + TILE_H - 1 + REACH, H - 1)
    rx0 = tl.maximum(tx0 - REACH, 0)
    rx1 = tl.minimum(tx0 + TILE_W - 1 + REACH, W - 1)
    RW = rx1 - rx0 + 1
    RN = (ry1 - ry0 + 1) * RW
    for fr in range(NU, N):
        k_frame = k_ptr + tl.cast(fr, tl.int64) * s_kn  # frame fr's channel 0
        for j0 in range(0, RN, BLOCK_K):
            j = j0 + offs_k
            kvalid = j < RN
            ky = ry0 + j // RW
            kx = rx0 + j % RW
            k_base = pixel_ptrs(k_frame, ky, kx, s_ky, s_kx)
            s = tile_scores(q_base, qvalid, k_base, kvalid, C, s_qc, s_kc, inv_t, BLOCK_C, INPUT_PRECISION, UPCAST)
            dy = ky[None, :] - qy[:, None]
            dx = kx[None, :] - qx[:, None]
            if SQUARE:
                inside = (tl.abs(dy) <= RADIUS) & (tl.abs(dx) <= RADIUS)
            else:
                inside = dy * dy + dx * dx < RADIUS * RADIUS
            ok = inside & qvalid[:, None] & kvalid[None, :]
            s = tl.where(ok, s, float("-inf"))
            cand = (fr * HW + ky * W + kx)[None, :]
            tv, ti = merge_topk(s, cand, tv, ti)

    # softmax over the kept scores, weighted sum of the candidates' labels
    used = (slot < TOPK)[None, :] & (tv > float("-inf")) & qvalid[:, None]
    mx = tl.max(tl.where(used, tv, float("-inf")), 1)
    mx = tl.where(qvalid, mx, 0.0)
    e = tl.where(used, tl.exp(tv - mx[:, None]), 0.0)
    den = tl.sum(e, 1)
    wgt = e / tl.where(den > 0, den, 1.0)[:, None]
    tid = tl.where(used, ti, 0)
    o_off = qy.to(tl.int64) * s_oy + qx.to(tl.int64) * s_ox
    offs_l = tl.arange(0, BLOCK_L)
    for l0 in range(0, L, BLOCK_L):
        ll = l0 + offs_l
        lmask = ll < L
        res = tl.zeros((BLOCK_Q, BLOCK_L), tl.float32)
        for t in tl.static_range(TOPK):
            pick = (slot == t)[None, :]
            w_t = tl.sum(tl.where(pick, wgt, 0.0), 1)  # (BQ,)
            id_t = tl.sum(tl.where(pick, tid, 0), 1)
            u_t = tl.sum(tl.where(pick & used, 1, 0), 1) > 0
            pos = id_t % HW
            v_off = (id_t // HW).to(tl.int64) * s_vn + (pos // W).to(tl.int64) * s_vy + (pos % W).to(tl.int64) * s_vx
            vals = tl.load(
                v_ptr + v_off[:, None] + ll[None, :].to(tl.int64) * s_vl, mask=u_t[:, None] & lmask[None, :], other=0.0
            ).to(tl.float32)
            res += w_t[:, None] * vals
        tl.store(o_ptr + o_off[:, None] + ll[None, :].to(tl.int64) * s_ol, res, mask=qvalid[:, None] & lmask[None, :])


# Launch configurations (BLOCK_K, num_warps, num_stages) per feature precision; the first one is
# the fixed configuration (interpreter, TRITONCORR_AUTOTUNE=0). Checked with compile_report(): 0
# spills on sm_80/sm_90 (fp32 needs BLOCK_C=32 with 3xTF32, 16-bit features take BLOCK_C=64).
_CONFIGS = {
    "fp32": ((64, 8, 2), (128, 8, 1)),
    "16bit": ((64, 8, 2), (128, 8, 2)),
}
#: Query rows per program tile (TILE_W = 8 columns). 16-bit features: 8 -> 64 query pixels, the M of
#: a Hopper wgmma. fp32 features: 4 (32 pixels, mma.sync 3xTF32): the 3xTF32 operand splits of a
#: 64-pixel tile spill on sm_80 (648 bytes at BLOCK_K 64, 8 warps).
_TILE_H = {"fp32": 4, "16bit": PROPAGATION_TILE[0]}
TILE_W = PROPAGATION_TILE[1]
_BLOCK_L = 16
_AUTOTUNE_KEY = ["C", "L", "N", "NU", "REACH", "TOPK", "SQUARE", "INPUT_PRECISION", "UPCAST"]
_AUTOTUNED = {
    fam: triton.autotune(
        configs=[triton.Config({"BLOCK_K": bk}, num_warps=nw, num_stages=ns) for bk, nw, ns in cfgs],
        key=_AUTOTUNE_KEY,
    )(_knn_propagate_kernel)
    for fam, cfgs in _CONFIGS.items()
}


def _family(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16bit"


def launch(query, keys, values, search: KnnSearch, *, wrap=None) -> torch.Tensor:
    """Run the kernel: query (C, h, w), keys (N, C, h, w), values (N, L, h, w) -> (L, h, w) fp32.
    ``wrap`` is ``torch.library.wrap_triton`` inside the op."""
    c, h, w = query.shape
    n, lab = keys.shape[0], values.shape[1]
    if n * h * w >= 2**31 - 1:
        raise ValueError(f"N*h*w = {n * h * w} candidates exceed the kernel's int32 candidate ids")
    out = alloc_output((lab, h, w), dtype=torch.float32, device=query.device)
    fam = _family(query.dtype)
    tile_h = _TILE_H[fam]
    grid = propagation_grid(h, w, tile_h)
    inv_t = 1.0 / search.temperature
    args = propagation_args(query, keys, values, out, search.unrestricted, search.radius, search.reach, inv_t)
    common = dict(
        TILE_H=tile_h,
        TILE_W=TILE_W,
        BLOCK_C=feature_block_c(c, query.dtype),
        BLOCK_L=_BLOCK_L,
        KP=max(2, next_power_of_2(search.topk)),
        TOPK=search.topk,
        SQUARE=search.window == "square",
        INPUT_PRECISION=feature_precision(query.dtype),
        UPCAST=upcast_bf16_dot(query.dtype),
    )
    if autotune_enabled():
        kernel = _AUTOTUNED[fam]
        (wrap(kernel) if wrap else kernel)[grid](*args, **common)
    else:
        bk, nw, ns = _CONFIGS[fam][0]
        kernel = _knn_propagate_kernel
        (wrap(kernel) if wrap else kernel)[grid](*args, **common, BLOCK_K=bk, num_warps=nw, num_stages=ns)
    return out


# triton_op infers the schema from the annotations (torch 2.13 does not use its ``schema=``): the
# settings arguments are those of reference.OP_SETTINGS, KnnSearch's fields in order.
@torch.library.triton_op("tritoncorr::knn_propagate", mutates_args=())
def _knn_propagate_triton_op(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    radius: int,
    topk: int,
    temperature: float,
    window: str,
    unrestricted: int,
) -> torch.Tensor:
    search = KnnSearch(radius, topk, temperature, window, unrestricted)
    return launch(query, keys, values, search, wrap=torch.library.wrap_triton)


def run(query, keys, values, search: KnnSearch, counts: list[int] | None = None) -> torch.Tensor:
    """The Triton path of ``knn_propagate`` (inputs checked): CUDA tensors through the ``triton_op``
    (which ``torch.compile`` sees), CPU tensors under the interpreter straight to :func:`launch`.

    The kernel takes the context slots as they are: repeated frames (``counts``, see
    ``reference.check_counts``) are expanded first, ``unrestricted`` then counting slots.
    """
    if counts is not None:
        reps = torch.tensor(counts, device=keys.device)
        search = replace(search, unrestricted=sum(counts[: search.unrestricted]))
        keys, values = keys.repeat_interleave(reps, 0), values.repeat_interleave(reps, 0)
    if query.is_cuda:
        return torch.ops.tritoncorr.knn_propagate(query, keys, values, *search.op_args())
    return launch(query, keys, values, search)


def aot_specs(fixed_only: bool = False) -> list:
    """DAVIS configuration (C = 256/512, L <= 16 -> one label block, topk 10): every autotune config
    of fp32 and bf16 features with the disc window, plus bf16 with the square window (STT);
    ``fixed_only``: the first config of each (used when autotuning is off)."""
    specs = []
    variants = [("fp32", False, 0), ("fp32", False, 1), ("bf16", False, 0), ("bf16", False, 1), ("bf16", True, 0)]
    for dtype, square, cfg in variants:
        if fixed_only and cfg:
            continue
        torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
        fam = _family(torch_dtype)
        bk, nw, ns = _CONFIGS[fam][cfg]
        constexprs = dict(
            TILE_H=_TILE_H[fam],
            TILE_W=TILE_W,
            BLOCK_K=bk,
            BLOCK_C=feature_block_c(512, torch_dtype),
            BLOCK_L=_BLOCK_L,
            KP=16,
            TOPK=10,
            SQUARE=square,
            INPUT_PRECISION=feature_precision(torch_dtype),
            UPCAST=False,
        )
        specs.append(
            aot_spec(
                f"knn_propagate[{dtype},{'square' if square else 'disc'},BK{bk},w{nw},s{ns}]",
                _knn_propagate_kernel,
                constexprs,
                {"q_ptr": dtype, "k_ptr": dtype, "v_ptr": "fp32", "o_ptr": "fp32"},
                floats=("inv_t",),
                num_warps=nw,
                num_stages=ns,
            )
        )
    return specs
