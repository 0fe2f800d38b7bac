"""Mechanism metrics: where protected answer attention goes (Zhao et al., 2026, Section 5).

For released (clean, protected) pairs and a surrogate with attentions, per
language-model layer k (first ``layers`` layers), averaged over samples:

- mass answer -> perturbation tokens (protected and clean; the clean pass looks
  at the same image-token positions),
- mass answer -> trigger tokens (protected; 0 on clean by construction),
- mass trigger -> perturbation tokens (protected),
- the paper's other Fig. 9 categories: mass answer -> the other image tokens
  (image tokens outside Omega_delta) and answer -> text tokens (prompt tokens
  that are neither image, trigger nor answer tokens), protected and clean, and
  answer -> answer tokens (causal self-attention, the remainder): per layer the
  categories partition the answer rows, so perturbation + other image + trigger
  + text + answer = 1 (clean: without the trigger),
- TV distance between protected and clean answer attention (clean attention
  zero-padded at trigger positions), layer-averaged, and Theorem 5.1's bound
  1 - sqrt(eta / 2) with eta = l_mass(Omega_y, Omega_gamma) achieved on the
  protected sample (averaged over samples; the bound holds per sample),
- the same bound for R = Omega_delta (eta_delta = l_mass(Omega_y, Omega_delta)).
  Omega_delta is present in the clean input (the same positions, unperturbed),
  so the theorem's premise fails there: Pinsker only gives
  TV >= 1 - sqrt(eta_delta / 2) - A_clean(Omega_delta), and ``bound_holds_delta``
  can be below 1 when clean answer attention already sits on those tokens.

``bound_holds`` (R = trigger) follows from Pinsker's inequality whenever the
trigger is absent from the clean input: it checks the code, it is not evidence.

Perturbation tokens are the top ``tau_delta`` image tokens by mean |delta|; a
sample whose delta is zero everywhere has none (its Omega_delta is empty, its
eta_delta undefined and left out of the means).
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
        dict with per-layer lists (length ``layers``, attention shares in [0, 1] averaged over
        samples) ``mass_answer_to_perturbation`` / ``mass_answer_to_perturbation_clean`` /
        ``mass_answer_to_trigger`` / ``mass_trigger_to_perturbation`` /
        ``mass_answer_to_other_image`` (+ ``_clean``) / ``mass_answer_to_text`` (+ ``_clean``) /
        ``mass_answer_to_answer`` (+ ``_clean``) (image categories: [] without "image_attention"),
        and scalars ``tv`` (mean layer-averaged TV), ``eta`` (mean l_mass(answer, trigger)),
        ``tv_bound`` (mean of per-sample bounds), ``bound_holds`` (share of samples whose TV >=
        their bound); for R = Omega_delta ``eta_delta``, ``tv_bound_delta`` and
        ``bound_holds_delta`` over the ``n_perturbed`` samples with a non-empty Omega_delta
        (NaN when there are none).
    """
    surrogate.require("attentions", who="mechanism metrics")
    if len(clean) != len(protected) or not clean:
        raise ValueError("need aligned, non-empty clean and protected samples")
    acc: Dict[str, List[torch.Tensor]] = {k: [] for k in ("a2p", "a2p_clean", "a2t", "t2p", "a2i", "a2i_clean",
                                                          "a2q", "a2q_clean", "a2a", "a2a_clean")}
    tvs, etas, bounds, etas_d, bounds_d = [], [], [], [], []
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
            perturbed = (scores.amax(1) > 0).unsqueeze(1)  # (B, 1): a zero delta has no perturbation tokens
            omega_p = perturbation_token_mask(pb.image_mask, scores.to(pb.image_mask.device), tau_delta) \
                & perturbed.to(pb.image_mask.device)
            omega_c = perturbation_token_mask(cb.image_mask, scores.to(cb.image_mask.device), tau_delta) \
                & perturbed.to(cb.image_mask.device)
            acc["a2p"].append(attention_mass(prot.attentions, pb.answer_mask, omega_p).cpu())
            acc["a2p_clean"].append(attention_mass(ref.attentions, cb.answer_mask, omega_c).cpu())
            acc["t2p"].append(attention_mass(prot.attentions, trigger, omega_p).cpu())
            acc["a2i"].append(attention_mass(prot.attentions, pb.answer_mask, pb.image_mask & ~omega_p).cpu())
            acc["a2i_clean"].append(attention_mass(ref.attentions, cb.answer_mask, cb.image_mask & ~omega_c).cpu())
            eta_d = mass_loss(prot.attentions, pb.answer_mask, omega_p)
            has_delta = omega_p.any(1)
            nan = torch.full_like(eta_d, float("nan"))
            etas_d.append(torch.where(has_delta, eta_d, nan).cpu())
            bounds_d.append(torch.where(has_delta, tv_lower_bound(eta_d), nan).cpu())
        acc["a2t"].append(attention_mass(prot.attentions, pb.answer_mask, trigger).cpu())
        for suffix, res, b, trig in (("", prot, pb, trigger), ("_clean", ref, cb, None)):
            text = (b.labels == -100) & b.attention_mask.bool() & ~b.image_mask  # the prompt's text tokens
            if trig is not None:
                text = text & ~trig
            acc["a2q" + suffix].append(attention_mass(res.attentions, b.answer_mask, text).cpu())
            acc["a2a" + suffix].append(attention_mass(res.attentions, b.answer_mask, b.answer_mask).cpu())
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
    eta_d_all = torch.cat(etas_d) if etas_d else torch.full_like(tv_all, float("nan"))
    bound_d_all = torch.cat(bounds_d) if bounds_d else torch.full_like(tv_all, float("nan"))
    has_d = ~eta_d_all.isnan()

    def per_layer(key):
        return torch.cat(acc[key], dim=1).mean(1).tolist() if acc[key] else []

    def mean_over(values, keep):
        return float(values[keep].mean()) if keep.any() else float("nan")

    return {"layers": layers, "mass_answer_to_perturbation": per_layer("a2p"),
            "mass_answer_to_perturbation_clean": per_layer("a2p_clean"),
            "mass_answer_to_trigger": per_layer("a2t"), "mass_trigger_to_perturbation": per_layer("t2p"),
            "tv": float(tv_all.mean()), "eta": float(np.nanmean(eta_all.numpy())) if (~eta_all.isnan()).any()
            else float("nan"), "tv_bound": float(bound_all.mean()),
            "bound_holds": float((tv_all >= bound_all - 1e-6).float().mean()),
            "mass_answer_to_other_image": per_layer("a2i"), "mass_answer_to_other_image_clean": per_layer("a2i_clean"),
            "mass_answer_to_text": per_layer("a2q"), "mass_answer_to_text_clean": per_layer("a2q_clean"),
            "mass_answer_to_answer": per_layer("a2a"), "mass_answer_to_answer_clean": per_layer("a2a_clean"),
            "n_perturbed": int(has_d.sum()), "eta_delta": mean_over(eta_d_all, has_d),
            "tv_bound_delta": mean_over(bound_d_all, has_d),
            "bound_holds_delta": mean_over((tv_all >= bound_d_all - 1e-6).float(), has_d)}
