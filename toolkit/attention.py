"""Attention-mass mathematics shared by MMGuard (as losses) and the mechanism metrics.

Notation of Zhao et al. (2026), "To See is Not to Learn": A_k(S) is the
attention of language-model layer k averaged over heads and over the query
positions in S, a distribution over key positions. For a target set R,
l_mass(S, R) = mean_k KL(U_R || A_k(S)) with U_R uniform over R
= mean_k [ -log|R| - (1/|R|) sum_{r in R} log A_k(S)[r] ].
It is zero exactly when S attends uniformly to R and nowhere else.

Theorem 5.1: if l_mass(Omega_y, R) <= eta for a set R that is absent from the
clean input (the trigger), the layer-averaged total-variation distance between
protected and clean answer attention is at least 1 - sqrt(eta / 2).

Shapes: attentions are tuples of (N, heads, L, L) (query, key); masks are (N, L) bool.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch

__all__ = ["attention_rows", "mass_loss", "attention_mass", "tv_distance", "kl_divergence", "tv_lower_bound",
           "align_to_protected", "align_unpadded_to_protected", "perturbation_token_mask"]

_TINY = 1e-12


def attention_rows(attention: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """A(S): head- and source-averaged attention rows, (N, L) distributions over keys.

    Samples with an empty source set get an all-zero row.
    """
    rows = attention.float().mean(1)  # (N, L, L)
    weight = source.float()
    count = weight.sum(1, keepdim=True)
    return torch.einsum("nq,nqk->nk", weight, rows) / count.clamp(min=1)


def mass_loss(attentions: Sequence[torch.Tensor], source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """l_mass(S, R) per sample (N,): mean over the given layers of KL(U_R || A_k(S)).

    Samples whose S or R is empty get 0 (nothing to bind).
    """
    size = target.float().sum(1)
    valid = (size > 0) & source.any(1)
    out = []
    for att in attentions:
        rows = attention_rows(att, source)
        logs = torch.log(rows.clamp(min=_TINY))
        mean_log = (logs * target.float()).sum(1) / size.clamp(min=1)
        out.append(-torch.log(size.clamp(min=1)) - mean_log)
    return torch.stack(out).mean(0) * valid.float()


def attention_mass(attentions: Sequence[torch.Tensor], source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of S's attention that lands on R, per layer: (layers, N)."""
    return torch.stack([(attention_rows(a, source) * target.float()).sum(1) for a in attentions])


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis (terms with p = 0 contribute 0)."""
    return (p * (torch.log(p.clamp(min=_TINY)) - torch.log(q.clamp(min=_TINY)))).sum(-1)


def tv_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Total-variation distance 0.5 * sum |p - q| over the last axis."""
    return 0.5 * (p - q).abs().sum(-1)


def tv_lower_bound(eta: torch.Tensor) -> torch.Tensor:
    """Theorem 5.1's bound 1 - sqrt(eta / 2) (clamped at 0)."""
    return (1 - torch.sqrt(eta.clamp(min=0) / 2)).clamp(min=0)


def align_to_protected(clean_rows: torch.Tensor, clean_ids: torch.Tensor, clean_valid: torch.Tensor,
                       prot_ids: torch.Tensor, prot_valid: torch.Tensor, trigger: torch.Tensor) -> torch.Tensor:
    """Map clean attention rows (N, Lc) onto the protected sequence's key positions (N, Lp).

    The protected sequence is the clean one with trigger tokens inserted. The
    common prefix and suffix map one to one; clean tokens in between map in
    order onto the protected non-trigger tokens in between (re-tokenisation
    next to the trigger can merge or split a token: leftover mass goes to the
    last such position). Trigger positions get zero (the paper's zero-padding).
    """
    clean = []
    for i in range(clean_rows.shape[0]):
        c_pos = clean_valid[i].nonzero().squeeze(1)
        clean.append((clean_rows[i, c_pos], clean_ids[i, c_pos].tolist()))
    return align_unpadded_to_protected(clean, prot_ids, prot_valid, trigger)


def align_unpadded_to_protected(clean: Sequence[Tuple[torch.Tensor, List[int]]], prot_ids: torch.Tensor,
                                prot_valid: torch.Tensor, trigger: torch.Tensor) -> torch.Tensor:
    """:func:`align_to_protected` for clean rows already cut to each sample's own tokens: ``clean[i]`` =
    (attention row over sample i's valid key positions (Lc_i,), their token ids). Lets a caller keep clean
    rows per sample (e.g. memoised across batches of other compositions)."""
    dtype, device = (clean[0][0].dtype, clean[0][0].device) if clean else (torch.float32, prot_ids.device)
    out = torch.zeros(tuple(prot_ids.shape), dtype=dtype, device=device)
    ids, valid, trig = prot_ids.cpu().numpy(), prot_valid.cpu().numpy(), trigger.cpu().numpy()
    for i, (src, c_ids) in enumerate(clean):
        p_pos = np.flatnonzero(valid[i])
        p, t, c = ids[i, p_pos], trig[i, p_pos], np.asarray(c_ids, dtype=ids.dtype)
        m = min(len(c), len(p))
        same = (c[:m] == p[:m]) & ~t[:m]  # common prefix, trigger positions excluded
        a = m if same.all() else int(same.argmin())
        same = (c[::-1][:m - a] == p[::-1][:m - a]) & ~t[::-1][:m - a]  # common suffix within what is left
        b = m - a if same.all() else int(same.argmin())
        middle = a + np.flatnonzero(~t[a:len(p) - b])  # protected non-trigger positions in between
        inner = len(c) - b - a  # clean positions in between map in order; leftovers to the last one
        inner_map = middle[np.minimum(np.arange(inner), len(middle) - 1)] if len(middle) else np.full(inner, -1)
        mapping = np.concatenate([np.arange(a), inner_map, np.arange(len(p) - b, len(p))]).astype(np.int64)
        keep = mapping >= 0
        targets = torch.as_tensor(p_pos[mapping[keep]], dtype=torch.long, device=out.device)
        out[i].index_add_(0, targets, src[torch.as_tensor(keep, device=src.device)])
    return out


def perturbation_token_mask(image_mask: torch.Tensor, token_scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Omega_delta: the top ceil(fraction * T) image tokens by score, as an (N, L) mask.

    Args:
        image_mask: (N, L) image-token positions (T per sample, sequence order).
        token_scores: (N, T) e.g. mean |delta| over each token's pixel region.
        fraction: tau_delta in (0, 1].
    """
    mask = torch.zeros_like(image_mask)
    t = token_scores.shape[1]
    k = max(1, int(torch.tensor(fraction * t).ceil().item()))
    top = token_scores.topk(min(k, t), dim=1).indices  # (N, k)
    for i in range(image_mask.shape[0]):
        pos = image_mask[i].nonzero().squeeze(1)
        if len(pos) != t:
            raise ValueError(f"sample {i}: {len(pos)} image tokens in the sequence, {t} token scores")
        mask[i, pos[top[i]]] = True
    return mask
