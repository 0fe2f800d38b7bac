"""Mechanism metrics: where protected answer attention goes (Zhao et al., 2026, Section 5).

For released (clean, protected) pairs and a surrogate with attentions, per
language-model layer k (first ``layers`` layers), averaged over samples:

- mass answer -> perturbation tokens (protected and clean; the clean pass looks
  at the same image-token positions),
- mass answer -> trigger tokens (protected; 0 on clean by construction),
- mass trigger -> perturbation tokens (protected),
- TV distance between protected and clean answer attention (clean attention
  zero-padded at trigger positions), layer-averaged, and Theorem 5.1's bound
  1 - sqrt(eta / 2) with eta = l_mass(Omega_y, Omega_gamma) achieved on the
  protected sample (averaged over samples; the bound holds per sample).

Perturbation tokens are the top ``tau_delta`` image tokens by mean |delta|.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch

from ..attention import (align_to_protected, attention_mass, attention_rows, mass_loss, perturbation_token_mask,
                         tv_distance, tv_lower_bound)
from ..data import VQASample, images_to_tensor
from ..engine import shape_batches
from ..surrogates.processing import region_means

__all__ = ["mechanism_metrics"]


@torch.no_grad()
def mechanism_metrics(surrogate, clean: Sequence[VQASample], protected: Sequence[VQASample], layers: int = 1,
                      tau_delta: float = 0.1, batch_size: int = 32) -> Dict[str, object]:
    """Attention-mass and TV measurements of a protection on ``surrogate`` (see the module docstring).

    Args:
        surrogate: an LVLM surrogate with "attentions" (victim or defense surrogate).
        clean / protected: aligned samples; protected questions may carry a trigger
            recorded in ``meta["trigger"]["span"]`` (as MMGuard and MEM release them).
        layers: first K language-model layers.

    Returns:
        dict with per-layer lists ``mass_answer_to_perturbation`` /
        ``mass_answer_to_perturbation_clean`` / ``mass_answer_to_trigger`` /
        ``mass_trigger_to_perturbation``, and scalars ``tv`` (mean layer-averaged TV),
        ``eta`` (mean l_mass(answer, trigger)), ``tv_bound`` (mean of per-sample bounds)
        and ``bound_holds`` (share of samples whose TV >= their bound).
    """
    surrogate.require("attentions", who="mechanism metrics")
    if len(clean) != len(protected) or not clean:
        raise ValueError("need aligned, non-empty clean and protected samples")
    acc: Dict[str, List[torch.Tensor]] = {k: [] for k in ("a2p", "a2p_clean", "a2t", "t2p")}
    tvs, etas, bounds = [], [], []
    has_image = "image_attention" in surrogate.capabilities
    for idx in shape_batches([s.image.shape for s in protected], batch_size):
        ids = idx.tolist()
        cs, ps = [clean[i] for i in ids], [protected[i] for i in ids]
        cx, px = images_to_tensor([s.image for s in cs]), images_to_tensor([s.image for s in ps])
        spans = [tuple(s.meta["trigger"]["span"]) if s.meta.get("trigger") and s.meta["trigger"].get("span")
                 else None for s in ps]
        prot = surrogate.forward_samples(px, ps, spans, attention_layers=layers)
        ref = surrogate.forward_samples(cx, cs, None, attention_layers=layers)
        pb, cb = prot.batch, ref.batch
        trigger = pb.trigger_mask if pb.trigger_mask is not None else torch.zeros_like(pb.answer_mask)
        if has_image:
            h, w = px.shape[-2:]
            scores = region_means((px - cx).abs().mean(1), surrogate.image_token_regions(h, w))
            omega_p = perturbation_token_mask(pb.image_mask, scores.to(pb.image_mask.device), tau_delta)
            omega_c = perturbation_token_mask(cb.image_mask, scores.to(cb.image_mask.device), tau_delta)
            acc["a2p"].append(attention_mass(prot.attentions, pb.answer_mask, omega_p).cpu())
            acc["a2p_clean"].append(attention_mass(ref.attentions, cb.answer_mask, omega_c).cpu())
            acc["t2p"].append(attention_mass(prot.attentions, trigger, omega_p).cpu())
        acc["a2t"].append(attention_mass(prot.attentions, pb.answer_mask, trigger).cpu())
        tv = 0.0
        for a_c, a_p in zip(ref.attentions, prot.attentions):
            p_clean = align_to_protected(attention_rows(a_c, cb.answer_mask), cb.input_ids,
                                         cb.attention_mask.bool(), pb.input_ids, pb.attention_mask.bool(), trigger)
            tv = tv + tv_distance(p_clean, attention_rows(a_p, pb.answer_mask))
        tv = tv / len(prot.attentions)
        eta = mass_loss(prot.attentions, pb.answer_mask, trigger)
        has_trigger = trigger.any(1)
        tvs.append(tv.cpu())
        etas.append(torch.where(has_trigger, eta, torch.full_like(eta, float("nan"))).cpu())
        bounds.append(torch.where(has_trigger, tv_lower_bound(eta), torch.zeros_like(eta)).cpu())
    tv_all, eta_all, bound_all = torch.cat(tvs), torch.cat(etas), torch.cat(bounds)

    def per_layer(key):
        return torch.cat(acc[key], dim=1).mean(1).tolist() if acc[key] else []

    return {"layers": layers, "mass_answer_to_perturbation": per_layer("a2p"),
            "mass_answer_to_perturbation_clean": per_layer("a2p_clean"),
            "mass_answer_to_trigger": per_layer("a2t"), "mass_trigger_to_perturbation": per_layer("t2p"),
            "tv": float(tv_all.mean()), "eta": float(np.nanmean(eta_all.numpy())) if (~eta_all.isnan()).any()
            else float("nan"), "tv_bound": float(bound_all.mean()),
            "bound_holds": float((tv_all >= bound_all - 1e-6).float().mean())}
