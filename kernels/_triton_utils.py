"""Triton pieces shared by the kernel families (imported only with a family's ``triton_kernels``).

* :func:`dot_acc`: ``acc + a @ b`` with the interpreter's bf16 work-around (see
  :func:`tritoncorr.kernels._utils.upcast_bf16_dot`), the one ``tl.dot`` call of the families.
* :func:`merge_topk`: merge a block of scores into a running top-k (lowest candidate id on ties).
* :func:`query_tile`: a program's tile of query pixels (the propagation kernels' grid).
* :func:`tile_scores`: scores of a tile of query pixels against a block of key cells of one frame, whose
  pixel pointers :func:`pixel_ptrs` computes.
* :func:`feature_block_c`, :func:`feature_precision`, :data:`PROPAGATION_TILE`: the launch choices
  the two propagation families share; :func:`propagation_grid` and :func:`propagation_args`: their
  grid and their kernels' common argument layout.
* :func:`aot_spec`: one :class:`~tritoncorr.kernels.aot.AotSpec` from a kernel and its constexprs
  (the signature read from the kernel's argument names), the one AOT signature builder.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import cdiv, next_power_of_2
from .aot import AotSpec

#: Query pixels per program of the propagation kernels, (rows, cols): 8 x 8 = 64 rows, the M of one
#: Hopper warpgroup MMA (``wgmma``); also a multiple of the 16-row ``mma.sync`` tile.
PROPAGATION_TILE = (8, 8)


def feature_block_c(c: int, dtype: torch.dtype) -> int:
    """Channel block of a propagation score dot: 32 for fp32 (3xTF32 holds three operand copies), else 64."""
    cap = 32 if dtype == torch.float32 else 64
    return max(16, min(cap, next_power_of_2(c)))


def feature_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of a propagation score dot: fp32 features through 3xTF32 (scores close to
    fp32: plain TF32 would perturb the top-k / softmax); 16-bit features as they come."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def propagation_grid(h: int, w: int, tile_h: int) -> tuple[int]:
    """Grid of a propagation kernel: one program per ``tile_h x PROPAGATION_TILE[1]`` tile of the h x w target
    (:func:`query_tile`)."""
    return (cdiv(h, tile_h) * cdiv(w, PROPAGATION_TILE[1]),)


def propagation_args(query, keys, values, out, *params) -> tuple:
    """Positional arguments of a propagation kernel (kNN, full window), which all take the same layout:
    ``q_ptr, k_ptr, v_ptr, o_ptr, H, W, C, L, N``, the kernel's own ``params``, then the strides of the
    query (C, h, w), keys (N, C, h, w), values (N, L, h, w) and output (L, h, w)."""
    c, h, w = query.shape
    sizes = (h, w, c, values.shape[1], keys.shape[0])
    strides = (*query.stride(), *keys.stride(), *values.stride(), *out.stride())
    return (query, keys, values, out, *sizes, *params, *strides)


@triton.jit
def dot_acc(a, b, acc, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` with fp32 accumulation. UPCAST (interpreter + bf16 only): Triton 3.9's interpreter
    multiplies the raw uint16 storage of bf16 operands, so they are widened first (values unchanged)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.jit
def merge_topk(s, cand, tv, ti):
    """Merge a block of scores ``s`` (BQ, BK) with candidate ids ``cand`` into the running top-k.

    ``tv``/``ti`` (BQ, KP): kept scores and ids. Every id in the block is larger than every kept id
    (candidates are visited in increasing id order), so a block score replaces the worst kept entry
    only when strictly larger; the worst kept entry is the lowest score, the highest id among ties.
    Rounds extract the block maximum (lowest id among ties) while some row can still improve.
    """
    worst = tl.min(tv, 1)
    need = tl.sum(tl.sum((s > worst[:, None]).to(tl.int32), 1), 0)
    while need > 0:
        m = tl.max(s, 1)
        sel = tl.min(tl.where(s == m[:, None], cand, 2147483647), 1)
        wid = tl.max(tl.where(tv == worst[:, None], ti, -2147483647), 1)
        rep = (ti == wid[:, None]) & (m > worst)[:, None]
        tv = tl.where(rep, m[:, None], tv)
        ti = tl.where(rep, sel[:, None], ti)
        s = tl.where(cand == sel[:, None], float("-inf"), s)
        worst = tl.min(tv, 1)
        need = tl.sum(tl.sum((s > worst[:, None]).to(tl.int32), 1), 0)
    return tv, ti


@triton.jit
def query_tile(H, W, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """This program's TILE_H x TILE_W tile of query pixels (programs run row-major over the tiles of the
    H x W image): its origin ``ty0, tx0`` (int32) and its pixels' rows, columns and in-image mask
    ``qy, qx, qvalid``, each (TILE_H * TILE_W,)."""
    pid = tl.program_id(0).to(tl.int64)
    tiles_w = tl.cdiv(W, TILE_W)
    ty0 = (pid // tiles_w).to(tl.int32) * TILE_H
    tx0 = (pid % tiles_w).to(tl.int32) * TILE_W
    offs_q = tl.arange(0, TILE_H * TILE_W)
    qy = ty0 + offs_q // TILE_W
    qx = tx0 + offs_q % TILE_W
    return ty0, tx0, qy, qx, (qy < H) & (qx < W)


@triton.jit
def pixel_ptrs(base, y, x, s_y, s_x):
    """Pointers ``base + y * s_y + x * s_x`` (64-bit offsets) of the pixels (y, x) (int32 vectors) of one
    image whose channel 0 starts at ``base``: the ``*_base`` arguments of :func:`tile_scores`."""
    return base + y.to(tl.int64) * s_y + x.to(tl.int64) * s_x


@triton.jit
def tile_scores(
    q_base,
    qvalid,
    k_base,
    kvalid,
    C,
    s_qc,
    s_kc,
    inv_t,
    BLOCK_C: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Scores (BLOCK_Q, BLOCK_K) fp32 ``<q, k> * inv_t`` of the query pixels at ``q_base`` (BLOCK_Q,)
    against the key cells at ``k_base`` (BLOCK_K,) (pointers to channel 0, :func:`pixel_ptrs`), over
    channel blocks of BLOCK_C (channel strides ``s_qc``, ``s_kc``); masked loads give 0."""
    offs_c = tl.arange(0, BLOCK_C)
    acc = tl.zeros((q_base.shape[0], k_base.shape[0]), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + offs_c
        cmask = cc < C
        qb = tl.load(
            q_base[:, None] + cc[None, :].to(tl.int64) * s_qc, mask=qvalid[:, None] & cmask[None, :], other=0.0
        )
        kb = tl.load(
            k_base[None, :] + cc[:, None].to(tl.int64) * s_kc, mask=cmask[:, None] & kvalid[None, :], other=0.0
        )
        acc = dot_acc(qb, kb, acc, INPUT_PRECISION, UPCAST)
    return acc * inv_t


def aot_spec(
    name: str,
    fn,
    constexprs: dict,
    pointers: dict[str, str],
    *,
    floats: tuple[str, ...] = (),
    num_warps: int = 4,
    num_stages: int = 3,
) -> AotSpec:
    """An :class:`AotSpec` for ``fn``: every argument in ``constexprs`` is a constexpr, every one in
    ``pointers`` a pointer to that Triton type ("fp32", "bf16", "i64"), every one in ``floats`` an
    fp32 scalar, every other one an i32 (sizes and strides)."""
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in pointers:
            signature[arg] = "*" + pointers[arg]
        else:
            signature[arg] = "fp32" if arg in floats else "i32"
    missing = set(constexprs) - set(fn.arg_names)
    if missing:
        raise ValueError(f"{name}: constexprs {sorted(missing)} are not arguments of the kernel")
    return AotSpec(
        name=name, fn=fn, signature=signature, constexprs=dict(constexprs), num_warps=num_warps, num_stages=num_stages
    )
