"""Query tiles against window rectangles: the GEMM layout of the CPU paths of the windowed kernels.

A ``T x T`` tile of query pixels sees, through its ``(2r+1)^2`` windows, exactly the
``R x R`` rectangle (``R = T + 2r``) of key pixels around it. Scores of the tile's queries against
the whole rectangle are one GEMM; a fixed mask (:func:`window_in_region`) keeps each query's own
window. Maps are zero-padded by ``r`` (and up to a multiple of ``T``), so out-of-image cells hold
zero features and values: logit 0 and value 0, the MAST/LIIR "zero" border, with no further
masking (:func:`region_in_image` masks them for STT's "truncate" border).

Layout: ``xpad`` is a ``(B, C, Hp, Wp)`` map padded by ``r`` on every side (plus the tile padding);
one *row of tiles* (query rows ``y0 .. y0 + T``) is processed at a time:

* :func:`query_blocks` -> ``(B, nbx, T*T, C)`` (tile-major, row-major inside a tile);
* :func:`regions` -> ``(B, nbx, C, R*R)`` (row-major rectangle);
* :func:`scatter_regions` adds rectangle gradients back (neighbouring rectangles overlap).

Used by :mod:`tritoncorr.kernels.local_corr` (local attention) and
:mod:`tritoncorr.kernels.knn_propagate` (full-window propagation).
"""

from __future__ import annotations

import torch

__all__ = ["attention_tile", "block_geometry", "window_in_region", "regions", "query_blocks", "region_in_image",
           "scatter_regions"]


def attention_tile(radius: int) -> int:
    """Query tile side of the CPU path: 8 up to radius 8 (window 17), else 16 (keeps the region
    ``(T + 2r)^2`` within ~2.6x the window ``(2r + 1)^2`` and the GEMMs large enough)."""
    return 8 if radius <= 8 else 16


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
    rows = xpad[:, :, y0:y0 + R]                          # (B, C, R, Wp)
    reg = rows.unfold(3, R, T)                            # (B, C, R, nbx, R)
    return reg.permute(0, 3, 1, 2, 4).reshape(B, nbx, C, R * R)


def query_blocks(qp, y0, T, nbx):
    """qp (B, C, Hq, Wq) padded to block multiples -> (B, nbx, T*T, C) queries of block-row y0."""
    B, C = qp.shape[:2]
    rows = qp[:, :, y0:y0 + T]                            # (B, C, T, nbx*T)
    blk = rows.reshape(B, C, T, nbx, T).permute(0, 3, 2, 4, 1)  # (B, nbx, T, T, C)
    return blk.reshape(B, nbx, T * T, C)


def region_in_image(H, W, y0q, T, R, radius, nbx, device):
    """(nbx, 1, R*R) bool: region cell inside the image (for truncate mode)."""
    ys = y0q - radius + torch.arange(R, device=device)
    xs = (torch.arange(nbx, device=device) * T).view(nbx, 1) - radius + torch.arange(R, device=device).view(1, R)
    oky = (ys >= 0) & (ys < H)
    okx = (xs >= 0) & (xs < W)
    return (oky.view(1, R, 1) & okx.view(nbx, 1, R)).reshape(nbx, 1, R * R)


def scatter_regions(dpad, reg, y0, R, T, nbx):
    """Add (B, nbx, C, R*R) region gradients into dpad (B, C, Hp, Wp) (overlapping regions sum)."""
    B, _, C, _ = reg.shape
    r5 = reg.reshape(B, nbx, C, R, R)
    for j in range(nbx):  # neighbouring regions overlap by R - T columns
        dpad[:, :, y0:y0 + R, j * T:j * T + R] += r5[:, j]
