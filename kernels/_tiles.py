"""Query tiles against window rectangles: the GEMM layout of the CPU paths of the windowed kernels.

A ``T x T`` tile of query pixels sees, through its ``(2r+1)^2`` windows, exactly the
``R x R`` rectangle (``R = T + 2r``) of key pixels around it. Scores of the tile's queries against
the whole rectangle are one GEMM; a fixed mask (:func:`window_in_region`) keeps each query's own
window. Out-of-image cells hold zero features and values: logit 0 and value 0, the MAST/LIIR
"zero" border, with no further masking (:func:`chunk_regions_in_image` masks them for STT's
"truncate" border).

Two layouts:

* whole rows of tiles from a padded map (full-window propagation, forward only): ``xpad`` is a
  ``(B, C, Hp, Wp)`` map padded by ``r`` on every side (plus the tile padding);
  :func:`query_blocks` -> ``(B, nbx, T*T, C)`` (tile-major, row-major inside a tile),
  :func:`regions` -> ``(B, nbx, C, R*R)`` (row-major rectangle);
* chunks of ``n`` tiles of one row of one image, read from the unpadded map (local attention,
  forward and backward, memory bounded by the chunk): :func:`chunk_queries` -> ``(n, T*T, C)``,
  :func:`chunk_regions` -> ``(n, C, R*R)``, :func:`add_chunk_regions` adds rectangle gradients back
  (neighbouring rectangles overlap).

Used by :mod:`tritoncorr.kernels.local_corr` (local attention) and
:mod:`tritoncorr.kernels.knn_propagate` (full-window propagation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "attention_tile",
    "block_geometry",
    "window_in_region",
    "regions",
    "query_blocks",
    "chunk_queries",
    "chunk_regions",
    "chunk_regions_in_image",
    "add_chunk_regions",
]


def attention_tile(radius: int) -> int:
    """Query tile side of the local-attention CPU path: 8 at every radius. Measured at STT res3
    (r 12, 64 x 64, 2 threads): as fast as 16 x 16 tiles in the forward at C 512 and 1.4x faster at
    C 128 (fwd and fwd+bwd); 1.4x slower in fwd+bwd at C 512, where its smaller rectangles
    (``C x (8 + 2r)^2``) cut the peak memory from 23.7 to 18.9 MB."""
    return 8


def block_geometry(H, W, radius, tile):
    """``(T, R, nby, nbx)``: tile side, region side ``T + 2r``, tiles per column and per row."""
    T = tile
    R = T + 2 * radius
    nby, nbx = -(-H // T), -(-W // T)
    return T, R, nby, nbx


def window_in_region(T, R, radius, device):
    """(T*T, R*R) bool: region cell inside the query's window."""
    iy = torch.arange(T, device=device)
    ry = torch.arange(R, device=device)
    dy = ry.view(1, R) - iy.view(T, 1) - radius  # (T, R)
    oky = dy.abs() <= radius
    m = oky.view(T, 1, R, 1) & oky.view(1, T, 1, R)
    return m.reshape(T * T, R * R)


def regions(xpad, y0, R, T, nbx):
    """xpad (B, C, Hp, Wp) -> (B, nbx, C, R*R): the key regions of block-row starting at padded row y0."""
    B, C = xpad.shape[:2]
    rows = xpad[:, :, y0 : y0 + R]  # (B, C, R, Wp)
    reg = rows.unfold(3, R, T)  # (B, C, R, nbx, R)
    return reg.permute(0, 3, 1, 2, 4).reshape(B, nbx, C, R * R)


def query_blocks(qp, y0, T, nbx):
    """qp (B, C, Hq, Wq) padded to block multiples -> (B, nbx, T*T, C) queries of block-row y0."""
    B, C = qp.shape[:2]
    rows = qp[:, :, y0 : y0 + T]  # (B, C, T, nbx*T)
    blk = rows.reshape(B, C, T, nbx, T).permute(0, 3, 2, 4, 1)  # (B, nbx, T, T, C)
    return blk.reshape(B, nbx, T * T, C)


def chunk_queries(x, b, y0, x0, T, n, dtype):
    """Queries of ``n`` tiles of one row: x (B, C, H, W) -> (n, T*T, C) in ``dtype`` for the tiles at
    rows ``y0 .. y0+T``, columns ``x0 + j*T .. x0 + (j+1)*T``; cells beyond the image are 0."""
    C, H, W = x.shape[1:]
    y1, x1 = min(y0 + T, H), min(x0 + n * T, W)
    blk = F.pad(x[b, :, y0:y1, x0:x1].to(dtype), (0, x0 + n * T - x1, 0, y0 + T - y1))  # (C, T, n*T)
    return blk.reshape(C, T, n, T).permute(2, 1, 3, 0).reshape(n, T * T, C)


def chunk_regions(x, b, y0, x0, T, radius, n, dtype):
    """Window rectangles of the same ``n`` tiles: x (B, C, H, W) -> (n, C, R*R), ``R = T + 2r``,
    read from the unpadded map (cells outside the image are 0: the "zero" border); only this chunk's
    band is copied, never a padded copy of the whole map."""
    C, H, W = x.shape[1:]
    R = T + 2 * radius
    ys, ye, xs, xe = y0 - radius, y0 + T + radius, x0 - radius, x0 + n * T + radius
    cy0, cy1, cx0, cx1 = max(ys, 0), min(ye, H), max(xs, 0), min(xe, W)
    band = F.pad(x[b, :, cy0:cy1, cx0:cx1].to(dtype), (cx0 - xs, xe - cx1, cy0 - ys, ye - cy1))  # (C, R, n*T + 2r)
    if n == 1:
        return band.reshape(1, C, R * R)
    return band.unfold(2, R, T).permute(2, 0, 1, 3).reshape(n, C, R * R)


def chunk_regions_in_image(H, W, y0, x0, T, radius, n, device):
    """(n, 1, R*R) bool: cell of the chunk's rectangles inside the image (STT's "truncate" border)."""
    R = T + 2 * radius
    ys = y0 - radius + torch.arange(R, device=device)
    xs = (x0 + torch.arange(n, device=device) * T).view(n, 1) - radius + torch.arange(R, device=device).view(1, R)
    oky = (ys >= 0) & (ys < H)
    okx = (xs >= 0) & (xs < W)
    return (oky.view(1, R, 1) & okx.view(n, 1, R)).reshape(n, 1, R * R)


def add_chunk_regions(dx, reg, b, y0, x0, T, radius):
    """Add rectangle gradients reg (n, C, R*R) of the chunk's tiles into dx (B, C, H, W) (overlapping
    rectangles sum; the parts outside the image are dropped). One strided add per tile (``F.fold``
    does the same sum several times slower on CPU)."""
    n, C, _ = reg.shape
    H, W = dx.shape[2:]
    R = T + 2 * radius
    ys = y0 - radius
    cy0, cy1 = max(ys, 0), min(ys + R, H)
    r4 = reg.view(n, C, R, R)
    for j in range(n):
        xs = x0 + j * T - radius
        cx0, cx1 = max(xs, 0), min(xs + R, W)
        dx[b, :, cy0:cy1, cx0:cx1] += r4[j, :, cy0 - ys : cy1 - ys, cx0 - xs : cx1 - xs]
