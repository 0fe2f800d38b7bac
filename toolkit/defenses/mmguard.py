"""MMGuard (Zhao et al., 2026, "To See is Not to Learn"): image perturbation + inserted text
trigger + cross-modal binding disruption.

Releases (x + delta, Insert(t, gamma), y): an L_inf-bounded image perturbation
(eps_x, default 8/255) and a per-sample trigger gamma of at most eps_t words
(default 5), each one admissible token, inserted (never replacing) into the
question; the answer is unchanged. Both minimise, against one or more adapted
surrogates, l_joint = s * lambda_train * l_train + lambda_bind * l_bind
(s = +1, or -1 for the "-Max" variants), where l_train is the answer NLL and
l_bind is one of

- Bridge Path Hijack (BPH): b1 * l_mass(Omega_gamma, Omega_delta)
  + b2 * l_mass(Omega_y, Omega_gamma) + b3 * l_mass(Omega_y, Omega_delta):
  answer tokens route their attention through the trigger and the
  perturbation tokens, and the trigger attends to the perturbation;
- Contrastive Routing Shift (CRS): -mean_k KL(sg(A_k^clean(Omega_y)) || A_k^prot(Omega_y)):
  protected answer attention is pushed away from the clean routing; the clean
  pass runs the same adapted surrogate on (x, t) with no delta and no trigger,
  its attention zero-padded at the trigger positions.

Omega_delta = the top ceil(tau_delta * T) image tokens by mean |delta| over the
pixel region each token sees; Omega_gamma = trigger tokens; Omega_y = answer
tokens; l_mass averages KL(U_R || A_k(S)) over the first ``attention_layers``
language-model layers (see :mod:`toolkit.attention`).

Schedule. The paper sweeps its schedule (App. F, Table 5: R in {1,3,5,7}, Q in {0..5}, P in
{0,1,2,5,8}, top-K in {8..512}, lambda_bind in {0.1..2}, |K| in {1..7}, eps_t in {1..9}) and fixes
only some values: LoRA rank 8 / 16 per surrogate, dropout 0.1 on all attention+MLP projections,
per-device batch 2, PGD step 1/255, lambda_train 1, and eps_x = 8/255 as "a practical default". The
defaults here are one point of those grids (ours): R = 3 rounds; each round every surrogate gets a
fresh LoRA (rank 8, lr 1e-4), trained for Q = 1 pass over the current protected data at batch 2
(``train_unit="passes"``: the paper calls Q "steps" but costs a round at O(n Q)) and discarded after
the round (``restart_every=1``), then P = 8 PGD steps on delta and one HotFlip screen-and-verify pass
(top-64) on the triggers. ``train_unit="steps", batch_size=64`` gives the schedule this toolkit
used before (Q optimiser steps on batches of 64, so PGD met an almost unadapted surrogate). A from-scratch surrogate (the tiny digits
setting) is better served by EMN-style settings (``train_mode="full"``, more train steps, restarts
from random inits): every knob of :class:`~toolkit.defenses.minmin.MinMinConfig` applies.

Variants (registered names): ``mmguard_image`` (delta only, l_train),
``mmguard_text`` (trigger only), ``mmguard_multimodal`` (both, no binding),
``mmguard_bph``, ``mmguard_crs``, ``mmguard_bph_max``, ``mmguard_crs_max``, and the fluent
``mmguard_bph_fluent`` / ``mmguard_crs_fluent`` (BPH / CRS with the fluency-aware trigger search on by
default, :class:`MMGuardFluentConfig`; every variant takes the options of
:mod:`toolkit.defenses.minmin.fluency`).
Threat model: white-box on the surrogates; gray/black-box transfer through
ensembles of other sizes / families.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch

from ..attention import align_unpadded_to_protected, attention_rows, kl_divergence, mass_loss, perturbation_token_mask
from ..engine import clamp_pixels
from ..registry import check_choice, check_range
from ..surrogates.processing import region_means
from .base import DEFENSES
from .minmin import MinMinDefense, MinMinRun
from .minmin.fluency import FluencyConfig, FluentTriggers, check_search_position

__all__ = ["MMGuard", "MMGUARD_VARIANTS", "MMGuardConfig", "MMGuardFluentConfig", "binding_loss_terms"]

#: variant -> (uses image delta, uses trigger, binding loss, sign of the training term)
MMGUARD_VARIANTS = {
    "image": (True, False, None, 1.0),
    "text": (False, True, None, 1.0),
    "multimodal": (True, True, None, 1.0),
    "bph": (True, True, "bph", 1.0),
    "crs": (True, True, "crs", 1.0),
    "bph_max": (True, True, "bph", -1.0),
    "crs_max": (True, True, "crs", -1.0),
}


@dataclass(frozen=True, kw_only=True)
class MMGuardConfig(FluencyConfig):
    """MMGuard settings (the paper's values where it fixes one, one point of its grids otherwise; see the
    module docstring).

    Attributes:
        max_trigger_tokens: eps_t (5). trigger_candidates: HotFlip top-K per slot (64).
        trigger_position: "start" (ours), "end", a word index or "natural" (per sample, searched).
        tau_delta: share of image tokens that are perturbation tokens (0.1, ours).
        attention_layers: |K|, first LM layers whose attention enters l_mass (1).
        lambda_train (1.0), lambda_bind (2.0), bph_weights (b1, b2, b3) = (1, 1, 1).
        trigger_every: trigger pass every k rounds (1).
        train_loss: l_train per sample: "sum" (the paper's Eq. 12: the NLL summed over the answer's
            tokens) or "mean" (the mean over the answer's tokens and the closing end-of-sequence token,
            the surrogate's training loss; what the toolkit used before, so lambda_bind acted as
            lambda_bind * (|y| + 1) relative to Eq. 12).
        single_token_words: every trigger word must stay exactly one token of every surrogate where it is
            inserted (start triggers and candidates are checked by re-tokenising), so eps_t counts tokens as
            the paper's budget does; False = the check of earlier versions (words), which a word split at
            the start of a turn could exceed.
        image_perturbation / text_trigger: switch the image delta / the inserted trigger on or off
            (None = the variant's own choice), e.g. BPH without trigger (``text_trigger=False``: the
            trigger terms of l_bind vanish) or without perturbation (``image_perturbation=False``: no
            PGD and no Omega_delta terms), the paper's component ablations.
        lambda_flu, fluency_scorer, filter_aware, filter_quantile, trigger_vocabulary, no_repeated_words,
            leakage_guard: the fluency-aware trigger search (:class:`~.minmin.fluency.FluencyConfig`; off by
            default).
    """

    max_trigger_tokens: int = 5
    trigger_candidates: int = 64
    trigger_position: Any = "start"
    trigger_every: int = 1
    tau_delta: float = 0.1
    attention_layers: int = 1
    lambda_train: float = 1.0
    lambda_bind: float = 2.0
    bph_weights: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    rounds: int = 3
    train_steps: int = 1
    train_unit: str = "passes"
    batch_size: int = 2
    pgd_steps: int = 8
    step_size: float = 1 / 255
    train_mode: str = "lora"
    lora_rank: int = 8
    lora_dropout: float = 0.1
    lr: float = 1e-4
    restart_every: int = 1
    init: str = "uniform"
    stop_accuracy: float = 1.0
    stop_clean_accuracy: float = 0.0
    train_loss: str = "sum"
    single_token_words: bool = True
    image_perturbation: Optional[bool] = None
    text_trigger: Optional[bool] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("train_loss", self.train_loss, {"sum", "mean"})
        for name in ("image_perturbation", "text_trigger"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"{name} must be true, false or null (the variant's choice), got {getattr(self, name)!r}")
        check_range("max_trigger_tokens", self.max_trigger_tokens, 1, 64)
        check_range("trigger_candidates", self.trigger_candidates, 1, 1 << 16)
        check_search_position(self.trigger_position)
        check_range("trigger_every", self.trigger_every, 1, 1 << 20)
        check_range("tau_delta", self.tau_delta, 0, 1, low_open=True)
        check_range("attention_layers", self.attention_layers, 1, 1024)
        check_range("lambda_train", self.lambda_train, 0, 1e6)
        check_range("lambda_bind", self.lambda_bind, 0, 1e6)
        if len(tuple(self.bph_weights)) != 3:
            raise ValueError(f"bph_weights must be three numbers (b1, b2, b3), got {self.bph_weights!r}")
        for b in self.bph_weights:
            check_range("bph_weights entry", b, 0, 1e6)


def binding_loss_terms(attentions, answer: torch.Tensor, trigger: torch.Tensor, perturbation: torch.Tensor,
                       weights: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """BPH loss per sample (N,): b1 l_mass(gamma, delta) + b2 l_mass(y, gamma) + b3 l_mass(y, delta)."""
    b1, b2, b3 = weights
    return (b1 * mass_loss(attentions, trigger, perturbation) + b2 * mass_loss(attentions, answer, trigger)
            + b3 * mass_loss(attentions, answer, perturbation))


@dataclass(frozen=True, kw_only=True)
class MMGuardFluentConfig(MMGuardConfig):
    """The fluent variants' defaults (ours, issue 15): every fluency option on. lambda_flu = 1 weighs one nat
    per token of defender-LM NLL like one nat of the per-sample loss; the scorer is the n-gram LM of the
    clean questions (the attacker's default scorer, fitted on the owner's data); the defender's filter
    threshold is the 0.95 quantile of the clean words' suspicion (the attacker's default is 0.99); triggers
    go anywhere in the question (natural), draw from the admissible tokens and the questions' own words
    (both), repeat nothing and leak no answer or chat-template fragment."""

    lambda_flu: float = 1.0
    filter_aware: bool = True
    trigger_position: Any = "natural"
    trigger_vocabulary: str = "both"
    no_repeated_words: bool = True
    leakage_guard: bool = True


class MMGuard(FluentTriggers, MinMinDefense):
    """MMGuard with a fixed ``variant`` (one registered subclass per variant; see the module docstring)."""

    Config = MMGuardConfig
    variant: ClassVar[str] = "crs"
    requires = ("image_grad", "trainable", "text", "token_grad", "attentions")

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        uses_delta, uses_trigger, self.binding, self.train_sign = MMGUARD_VARIANTS[self.variant]
        cfg = self.config
        self.uses_delta = uses_delta if cfg.image_perturbation is None else cfg.image_perturbation
        self.uses_trigger = uses_trigger if cfg.text_trigger is None else cfg.text_trigger
        if not (self.uses_delta or self.uses_trigger):
            raise ValueError(f"{self.name}: image_perturbation and text_trigger are both off: nothing to optimise")
        if not self.uses_delta and (cfg.pgd_steps or cfg.init != "zeros"):
            self.config = type(cfg)(**{**cfg.to_dict(), "pgd_steps": 0, "init": "zeros"})
        # what this configuration really calls on a surrogate (an image-only MMGuard needs no token gradients
        # and, without a binding term, no attentions)
        self.requires = ("image_grad", "trainable", "text") + (("token_grad",) if self.uses_trigger else ()) \
            + (("attentions",) if self.binding else ()) + (("image_attention",) if self.binding == "bph" else ()) \
            + (("lora",) if self.config.train_mode == "lora" else ())

    # ------------------------------------------------------------------ hooks
    def setup(self, run: MinMinRun) -> None:
        """Random admissible start triggers (trigger variants); no trigger otherwise."""
        if self.uses_trigger:
            self.start_triggers(run)

    def text_step(self, run: MinMinRun) -> None:
        """One HotFlip pass over every sample's trigger every ``trigger_every`` rounds, on l_joint."""
        if not self.uses_trigger or run.round % self.config.trigger_every:
            return
        self.trigger_pass(run, torch.arange(len(run.pert)), self.config.trigger_candidates,
                          batch_size=self.config.pgd_batch_size, single_token=self.config.single_token_words)

    def trigger_objective(self, run: MinMinRun):
        """l_joint of dataset items (CRS reuses each item's clean pass within the step)."""
        pert = run.pert

        def loss_fn(surrogate, pixels, samples, spans, embedding_grad, items, image_index=None):
            idx = torch.tensor(list(items))
            return self.joint_loss(surrogate, pixels, samples, spans, pert.deltas(idx), pert.clean(idx),
                                   [pert.samples[i] for i in idx.tolist()], embedding_grad, items=idx.tolist(),
                                   memo=run.step_cache.setdefault("crs_clean", {}), image_index=image_index)
        return loss_fn

    def objective(self, run: MinMinRun, x, d, samples, idx):
        """Weighted sum over the (expanded) surrogates of the per-sample l_joint of (x + d)."""
        pert = run.pert
        _, spans = pert.batch_samples(idx)
        clean = [pert.samples[i] for i in idx.tolist()]
        pixels = clamp_pixels(x + d)
        memo = run.step_cache.setdefault("crs_clean", {})
        total = 0.0
        for s, w in run.weighted:
            loss, _ = self.joint_loss(s, pixels, samples, spans, d, x, clean, items=idx.tolist(), memo=memo)
            total = total + w * loss.sum()
        return total

    def _clean_answer_rows(self, surrogate, clean_pixels: torch.Tensor, clean_samples, k: int,
                           items: Optional[Sequence[int]] = None, memo: Optional[Dict] = None
                           ) -> List[Tuple[List[torch.Tensor], List[int]]]:
        """CRS's clean pass (no delta, no trigger), per sample: the answer-attention row of each of the first
        ``k`` layers over the sample's own key positions, and the token ids there.

        The clean pass depends only on the sample and the frozen surrogate, so when ``items`` (dataset
        indices) and a ``memo`` (a dict that lives for one step) are given it is memoised per (surrogate,
        item): a trigger pass verifies every candidate of every slot against one clean pass per sample
        instead of one each.
        """
        memo = memo if items is not None else None
        n = len(clean_samples)
        if memo is None:
            todo = list(range(n))
        else:
            first: Dict[int, int] = {}
            for j, i in enumerate(items):
                if (id(surrogate), int(i)) not in memo:
                    first.setdefault(int(i), j)
            todo = sorted(first.values())
        fresh: Dict[int, Tuple[List[torch.Tensor], List[int]]] = {}
        if todo:
            sel = torch.tensor(todo)
            with torch.no_grad():
                res = surrogate.forward_samples(clean_pixels[sel], [clean_samples[j] for j in todo], None,
                                                attention_layers=k)
            valid = res.batch.attention_mask.bool()
            layers = [attention_rows(a, res.batch.answer_mask) for a in res.attentions]
            for r, j in enumerate(todo):
                pos = valid[r].nonzero().squeeze(1)
                fresh[j] = ([rows[r, pos] for rows in layers], res.batch.input_ids[r, pos].tolist())
        if memo is None:
            return [fresh[j] for j in range(n)]
        for j in todo:
            memo[(id(surrogate), int(items[j]))] = fresh[j]
        return [memo[(id(surrogate), int(i))] for i in items]

    # ------------------------------------------------------------------ loss
    def joint_loss(self, surrogate, pixels: torch.Tensor, samples, spans, deltas: torch.Tensor,
                   clean_pixels: Optional[torch.Tensor], clean_samples: Optional[List], embedding_grad: bool = False,
                   items: Optional[Sequence[int]] = None, memo: Optional[Dict] = None,
                   image_index: Optional[torch.Tensor] = None):
        """Per-sample l_joint (N,) on one surrogate, and the protected forward result.

        Args:
            pixels: protected images (N, 3, H, W), or (M, 3, H, W) distinct ones that row n reads at
                ``image_index[n]`` (rows sharing an image, e.g. trigger candidates); deltas: the rows'
                perturbations (N, 3, H, W) (for Omega_delta).
            samples / spans: questions with triggers inserted and the trigger character spans.
            clean_pixels / clean_samples: the clean inputs (CRS only).
            items / memo: the samples' dataset indices and a dict that lives for one step (CRS: the step
                reuses each sample's clean pass; without them every call runs its own).
        """
        cfg = self.config
        k = cfg.attention_layers if self.binding else 0
        res = surrogate.forward_samples(pixels, samples, spans, attention_layers=k, embedding_grad=embedding_grad,
                                        image_index=image_index)
        if cfg.train_loss == "sum":
            if getattr(res, "answer_nll", None) is None:
                raise ValueError(f"{self.name}: train_loss='sum' needs per-token answer NLL, which the "
                                 f"{surrogate.family} surrogate does not report; set train_loss='mean'")
            l_train = res.answer_nll
        else:
            l_train = res.loss
        loss = self.train_sign * cfg.lambda_train * l_train
        if self.binding is None or not cfg.lambda_bind:
            return loss, res
        batch = res.batch
        trigger = batch.trigger_mask if batch.trigger_mask is not None else torch.zeros_like(batch.answer_mask)
        if self.binding == "bph":
            h, w = pixels.shape[-2:]
            regions = surrogate.image_token_regions(h, w)
            scores = region_means(deltas.detach().abs().mean(1).to(regions.device), regions)
            omega_delta = perturbation_token_mask(batch.image_mask, scores.to(batch.image_mask.device), cfg.tau_delta)
            if not self.uses_delta:  # no perturbation: its terms vanish (l_mass of an empty set is 0)
                omega_delta = torch.zeros_like(omega_delta)
            bind = binding_loss_terms(res.attentions, batch.answer_mask, trigger, omega_delta, cfg.bph_weights)
        else:
            clean = self._clean_answer_rows(surrogate, clean_pixels, clean_samples, k, items, memo)
            valid = batch.attention_mask.bool()
            bind = 0.0
            for layer, a_prot in enumerate(res.attentions):
                p_clean = align_unpadded_to_protected([(rows[layer], ids) for rows, ids in clean], batch.input_ids,
                                                      valid, trigger)
                bind = bind - kl_divergence(p_clean, attention_rows(a_prot, batch.answer_mask))
            bind = bind / len(res.attentions)
        return loss + cfg.lambda_bind * bind, res


def _register(variant: str, fluent: bool = False) -> type:
    suffix = "_fluent" if fluent else ""
    attrs = {"variant": variant, "__doc__": f"MMGuard, variant {variant!r}{' with the fluent trigger search' if fluent else ''}"
                                            f" (see :mod:`toolkit.defenses.mmguard`)."}
    if fluent:
        attrs["Config"] = MMGuardFluentConfig
    cls = type(f"MMGuard_{variant}{suffix}", (MMGuard,), attrs)
    return DEFENSES.register(f"mmguard_{variant}{suffix}")(cls)


for _v in MMGUARD_VARIANTS:
    _register(_v)
for _v in ("bph", "crs"):
    _register(_v, fluent=True)
