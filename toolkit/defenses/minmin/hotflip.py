"""HotFlip trigger search: one screen-and-verify pass over every trigger slot.

Screen: the gradient of a per-sample loss with respect to each slot's token
embedding, scored against every admissible token of each surrogate (first-order
change of the loss, :func:`~toolkit.triggers.hotflip_scores`), keeps the top
``candidates`` words per surrogate. Verify: the exact loss of every candidate
question (re-tokenised), batched; a slot changes only if its best candidate
beats the current word, so a pass never raises the (weighted) loss.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch

from ...engine import shape_batches
from ...surrogates.ensemble import weighted_members
from ...triggers import hotflip_scores, insert_trigger
from .state import Perturbation

__all__ = ["trigger_pass", "answer_loss", "TriggerLoss"]

#: ``loss_fn(surrogate, pixels, samples, spans, embedding_grad, items)`` -> (per-sample loss (N,), ForwardResult)
TriggerLoss = Callable


def answer_loss(surrogate, pixels, samples, spans, embedding_grad, items=None):
    """The per-sample answer loss (N,) and the forward result (token embeddings captured when asked)."""
    res = surrogate.forward_samples(pixels, samples, spans, embedding_grad=embedding_grad)
    return res.loss, res


def trigger_pass(surrogates: Sequence, pert: Perturbation, indices: torch.Tensor, candidates: int,
                 loss_fn: Optional[TriggerLoss] = None, batch_size: int = 32, descend: bool = True,
                 who: str = "trigger search", single_token: bool = True) -> Dict[str, float]:
    """One HotFlip screen-and-verify pass over every trigger slot of the samples ``indices`` (in place).

    Args:
        surrogates: frozen surrogates (ensembles are expanded into weighted members).
        pert: the perturbation whose ``triggers`` are updated.
        indices: dataset indices to search.
        candidates: words kept per slot and surrogate by the gradient screen.
        loss_fn: ``(surrogate, pixels, samples, spans, embedding_grad, items)`` -> (per-sample loss (N,),
            ForwardResult); spans are whole-trigger character spans, items dataset indices. Default:
            :func:`answer_loss`.
        batch_size: samples per screen batch and candidates per verify batch.
        descend: lower the loss (True) or raise it (False).
        who: named in capability errors.
        single_token: verify only candidates that stay exactly one token of every surrogate where they
            are inserted (:meth:`Perturbation.single_token_words`), so a trigger of k words spends k tokens.

    Returns:
        ``changed`` (slots changed), ``loss_before`` and ``loss_after`` (mean per slot visit),
        ``rejected`` (candidates dropped because they split into several tokens in place).
    """
    loss_fn = loss_fn or answer_loss
    weighted = weighted_members(surrogates)
    for s, _ in weighted:
        s.require("token_grad", "text", who=who)
    vocabs = [s.trigger_vocabulary().without(pert.banned_words) for s, _ in weighted]
    sign = 1.0 if descend else -1.0
    changed, before, after, rejected = 0, [], [], 0
    for idx in shape_batches(pert.shapes, batch_size, indices=indices):
        pixels = pert.pixels(idx)
        n_slots = max(len(pert.triggers[i]) for i in idx.tolist())
        for slot in range(n_slots):
            rows = [i for i in idx.tolist() if slot < len(pert.triggers[i])]
            if not rows:
                continue
            sel = torch.tensor([idx.tolist().index(i) for i in rows])
            px = pixels[sel]
            questions = [pert.question(i) for i in rows]
            samples = [pert.samples[i].with_(question=q) for i, (q, _) in zip(rows, questions)]
            full_spans = [span for _, span in questions]
            word_spans = [insert_trigger(pert.samples[i].question, pert.triggers[i], pert.position)[2][slot]
                          for i in rows]
            proposals: List[set] = [set() for _ in rows]
            current_loss = torch.zeros(len(rows))
            for (s, weight), vocab in zip(weighted, vocabs):
                loss, res = loss_fn(s, px, samples, full_spans, True, rows)
                (sign * loss.sum()).backward()
                current_loss += weight * loss.detach().float().cpu()
                emb, grad = res.embeddings.detach(), res.embeddings.grad
                mask = s.trigger_token_mask(tuple(px.shape[-2:]), samples, word_spans)
                g = torch.stack([grad[r][mask[r]].mean(0) for r in range(len(rows))])
                e = torch.stack([emb[r][mask[r]].mean(0) for r in range(len(rows))])
                scores = hotflip_scores(g, e, s.embedding_matrix().detach(), vocab)
                top = scores.topk(min(candidates, len(vocab)), dim=1, largest=False).indices.cpu()
                for r in range(len(rows)):
                    proposals[r].update(vocab.words[k] for k in top[r].tolist())
            # exact verification, batched over (sample, candidate) pairs
            jobs = []
            for r, i in enumerate(rows):
                for w in sorted(proposals[r] - {pert.triggers[i][slot]}):
                    words = list(pert.triggers[i])
                    words[slot] = w
                    jobs.append((r, i, words))
            if single_token and jobs:
                keep = pert.single_token_words(surrogates, [i for _, i, _ in jobs], [w for _, _, w in jobs], slot)
                rejected += len(jobs) - sum(keep)
                jobs = [job for job, good in zip(jobs, keep) if good]
            best = {r: (sign * float(current_loss[r]), None) for r in range(len(rows))}  # signed, lower wins
            with torch.no_grad():
                for start in range(0, len(jobs), batch_size):
                    chunk = jobs[start:start + batch_size]
                    cand_px = px[torch.tensor([r for r, _, _ in chunk])]
                    cand_samples, cand_spans = [], []
                    for r, i, words in chunk:
                        text, span = pert.question(i, words)
                        cand_samples.append(pert.samples[i].with_(question=text))
                        cand_spans.append(span)
                    items = [i for _, i, _ in chunk]
                    total = sum(w * loss_fn(s, cand_px, cand_samples, cand_spans, False, items)[0].float().cpu()
                                for s, w in weighted)
                    for (r, i, words), value in zip(chunk, (sign * total).tolist()):
                        if value < best[r][0] - 1e-7:
                            best[r] = (value, words)
            for r, i in enumerate(rows):
                before.append(float(current_loss[r]))
                value, words = best[r]
                if words is not None:
                    pert.triggers[i] = words
                    changed += 1
                after.append(sign * value)
    return {"changed": changed, "loss_before": sum(before) / max(1, len(before)),
            "loss_after": sum(after) / max(1, len(after)), "rejected": rejected}
