"""Softmax over anchors, the chunked PyTorch path (default for CPU tensors): never holds P x A.

Rows are processed in chunks of at most :data:`CHUNK_ROWS` (and ~16 MB of fp32 logits); each chunk's
(chunk, A) logits are freed before the next chunk's exist.

* :func:`nll_forward` -> (loss, lse), each (P,);
* :func:`nll_backward` -> (grad_features (P, K), grad_anchors (A, K)), logits recomputed per chunk;
* :func:`group_argmax` -> (P,) int64.
"""

from __future__ import annotations

import torch

from .reference import compute_dtype

__all__ = ["nll_forward", "nll_backward", "group_argmax", "CHUNK_ROWS"]

#: Rows per chunk of the PyTorch path (a chunk holds a few CHUNK_ROWS x A fp32 matrices).
CHUNK_ROWS = 4096
_CHUNK_ELEMENTS = 1 << 22  # at most ~16 MB of fp32 logits per chunk, whatever A is


def _chunk_rows(A: int) -> int:
    return max(1, min(CHUNK_ROWS, _CHUNK_ELEMENTS // max(A, 1)))


def nll_forward(features, anchors, labels, temperature):
    P = features.shape[0]
    cdt = compute_dtype(features.dtype)
    loss = torch.empty(P, dtype=cdt, device=features.device)
    lse = torch.empty(P, dtype=cdt, device=features.device)
    q_scaled = anchors.to(cdt) * (1.0 / float(temperature))  # (A, K): fold 1/tau into the anchors
    rows = _chunk_rows(anchors.shape[0])
    for s in range(0, P, rows):
        e = min(P, s + rows)
        z = features[s:e].to(cdt) @ q_scaled.T  # (chunk, A) logits
        lab = labels[s:e]
        z_lab = z.gather(1, lab.clamp(min=0)[:, None])[:, 0]
        z_max = z.amax(dim=1)
        # log-sum-exp in place (torch.logsumexp is several times slower on CPU)
        lse_c = z.sub_(z_max[:, None]).exp_().sum(dim=1).log_().add_(z_max)
        lse[s:e] = lse_c
        loss[s:e] = torch.where(lab >= 0, lse_c - z_lab, torch.zeros((), dtype=cdt, device=z.device))
        del z  # freed before the next chunk's logits exist: one (chunk, A) matrix at a time
    return loss, lse


def nll_backward(features, anchors, labels, lse, grad_loss, grad_lse, temperature):
    P = features.shape[0]
    cdt = compute_dtype(features.dtype)
    scale = 1.0 / float(temperature)
    q = anchors.to(cdt)
    q_scaled = q * scale
    grad_features = torch.empty_like(features, memory_format=torch.contiguous_format)
    grad_anchors = torch.zeros(anchors.shape, dtype=cdt, device=anchors.device)
    rows = _chunk_rows(anchors.shape[0])
    for s in range(0, P, rows):
        e = min(P, s + rows)
        f = features[s:e].to(cdt)
        z = f @ q_scaled.T
        lab = labels[s:e]
        g_loss = torch.where(lab >= 0, grad_loss[s:e].to(cdt), torch.zeros((), dtype=cdt, device=f.device))
        g_tot = g_loss + grad_lse[s:e].to(cdt)
        dz = z.sub_(lse[s:e].to(cdt)[:, None]).exp_().mul_(g_tot[:, None])  # softmax * (g + h), in place
        dz.scatter_add_(1, lab.clamp(min=0)[:, None], -g_loss[:, None])  # - onehot * g
        grad_features[s:e] = (dz @ q_scaled).to(features.dtype)
        grad_anchors.addmm_(dz.T, f, alpha=scale)
        del z, dz, f  # one (chunk, A) matrix at a time
    return grad_features, grad_anchors.to(anchors.dtype)


def group_argmax(features, anchors, feature_group, anchor_group):
    P = features.shape[0]
    cdt = compute_dtype(features.dtype)
    out = torch.empty(P, dtype=torch.int64, device=features.device)
    q = anchors.to(cdt)
    ag = anchor_group.to(torch.int64)
    rows = _chunk_rows(anchors.shape[0])
    for s in range(0, P, rows):
        e = min(P, s + rows)
        z = features[s:e].to(cdt) @ q.T
        valid = feature_group[s:e].to(torch.int64)[:, None] == ag[None, :]
        z.masked_fill_(~valid, float("-inf"))
        idx = z.argmax(dim=1) if anchors.shape[0] > 0 else torch.zeros(e - s, dtype=torch.int64, device=z.device)
        out[s:e] = torch.where(valid.any(dim=1), idx, torch.full_like(idx, -1))
        del z, valid  # one (chunk, A) matrix at a time
    return out
