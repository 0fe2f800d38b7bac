"""HotFlip trigger search: one screen-and-verify pass over every trigger slot.

Screen: the gradient of a per-sample loss with respect to each slot's token
embedding, scored against every admissible token of each surrogate (first-order
change of the loss, :func:`~toolkit.triggers.hotflip_scores`), keeps the top
``candidates`` words per surrogate. Verify: the exact loss of every candidate
question (re-tokenised), batched; a slot changes only if its best candidate
beats the current word, so a pass never raises the (weighted) loss.

Fluency rules (``pert.rules``, :class:`~.fluency.TriggerRules`; None = the plain search above, bit for
bit): each vocabulary part gets its own top-K in the screen; candidates that repeat words are not verified;
with natural insertion slot 0 also verifies the current trigger moved to every other word boundary; the
verified value of a candidate is sign * loss + lambda_flu * (NLL(candidate question) - NLL(clean question))
under the defender's LM, added once per sample (not per surrogate), so a candidate wins only if loss plus
fluency improves; under ``filter_aware`` the best improving candidate that passes the defender's ONION test
wins (checked best first, so the filter runs only on the few that would win).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ...engine import shape_batches
from ...surrogates.ensemble import weighted_members
from ...triggers import hotflip_scores, insert_trigger, trigger_position_of
from .state import Perturbation

__all__ = ["trigger_pass", "answer_loss", "TriggerLoss", "VERIFY_TOKENS", "verify_rows", "owner_chunks"]

#: token budget of one verification forward (rows x sequence length); see :func:`verify_rows`
VERIFY_TOKENS = 8192

#: ``loss_fn(surrogate, pixels, samples, spans, embedding_grad, items, image_index)`` -> (per-sample loss (N,),
#: ForwardResult); ``pixels`` holds M distinct images and row n uses ``pixels[image_index[n]]``
TriggerLoss = Callable


def answer_loss(surrogate, pixels, samples, spans, embedding_grad, items=None, image_index=None):
    """The per-sample answer loss (N,) and the forward result (token embeddings captured when asked); rows
    share the images ``pixels[image_index]`` (None: one image per row)."""
    res = surrogate.forward_samples(pixels, samples, spans, embedding_grad=embedding_grad, image_index=image_index)
    return res.loss, res


def verify_rows(batch_size: int, sequence_length: int, coupled: bool) -> int:
    """Candidate rows per verification forward: ``VERIFY_TOKENS // sequence_length``, at least ``batch_size``
    (the rows a pass verified at once before) and at most 4 x ``batch_size``; exactly ``batch_size`` when a
    surrogate's loss couples a batch's rows (``coupled``: CLIP's contrastive loss, whose value depends on
    which candidates share the forward). Short sequences (tiny models) verify in fewer, larger forwards; a
    real LVLM's (hundreds of image tokens) keeps ``batch_size``, so the KV cache repeated over the rows
    (:meth:`~toolkit.surrogates.HFVisionLanguageSurrogate.run_shared`) stays as large as before. Rows
    never depend on each other otherwise, so the chunking does not change a result."""
    if coupled:
        return batch_size
    return max(batch_size, min(4 * batch_size, VERIFY_TOKENS // max(1, sequence_length)))


def owner_chunks(owners: Sequence[int], limit: int) -> List[Tuple[int, int]]:
    """(start, end) ranges cutting a job list ordered by owner (sample) into forwards of at most ``limit``
    jobs that hold whole owners, so each sample's shared prefix runs once; an owner with more than
    ``limit`` jobs alone is split into ``limit``-sized pieces."""
    bounds, start, n = [], 0, len(owners)
    while start < n:
        end = start
        while end < n and end - start < limit:
            run_end = end
            while run_end < n and owners[run_end] == owners[end]:
                run_end += 1
            if run_end - start > limit and end > start:  # the next owner would overflow: it starts the next chunk
                break
            end = min(run_end, start + limit)
        bounds.append((start, end))
        start = end
    return bounds


def trigger_pass(surrogates: Sequence, pert: Perturbation, indices: torch.Tensor, candidates: int,
                 loss_fn: Optional[TriggerLoss] = None, batch_size: int = 32, descend: bool = True,
                 who: str = "trigger search", single_token: bool = True) -> Dict[str, float]:
    """One HotFlip screen-and-verify pass over every trigger slot of the samples ``indices`` (in place).

    Args:
        surrogates: frozen surrogates (ensembles are expanded into weighted members).
        pert: the perturbation whose ``triggers`` are updated.
        indices: dataset indices to search.
        candidates: words kept per slot and surrogate by the gradient screen.
        loss_fn: ``(surrogate, pixels, samples, spans, embedding_grad, items, image_index)`` -> (per-sample
            loss (N,), ForwardResult); spans are whole-trigger character spans, items dataset indices, and row n
            sees the image ``pixels[image_index[n]]`` (the screen passes one image per row, the verification
            every candidate of a sample against its one image, so a surrogate may run their common prefix once:
            :meth:`~toolkit.surrogates.HFVisionLanguageSurrogate.run_shared`). Default: :func:`answer_loss`.
        batch_size: samples per screen batch; candidates per verify batch are :func:`verify_rows` of it.
        descend: lower the loss (True) or raise it (False).
        who: named in capability errors.
        single_token: verify only candidates that stay exactly one token of every surrogate where they
            are inserted (:meth:`Perturbation.single_token_words`), so a trigger of k words spends k tokens.

    Returns:
        ``changed`` (slots changed), ``loss_before`` and ``loss_after`` (mean per slot visit),
        ``rejected`` (candidates dropped because they split into several tokens in place); the losses are
        the surrogate loss alone (no fluency term).
    """
    loss_fn = loss_fn or answer_loss
    weighted = weighted_members(surrogates)
    for s, _ in weighted:
        s.require("token_grad", "text", who=who)
    rules = pert.rules
    if rules is None:
        vocabs = [[s.trigger_vocabulary().without(pert.banned_words)] for s, _ in weighted]
    else:
        rules.refresh()
        vocabs = [rules.vocabularies(s) for s, _ in weighted]
    sign = 1.0 if descend else -1.0
    coupled = any(s.contrastive for s, _ in weighted)
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
            word_spans = [insert_trigger(pert.samples[i].question, pert.triggers[i], pert.position_of(i))[2][slot]
                          for i in rows]
            proposals: List[set] = [set() for _ in rows]
            current_loss = torch.zeros(len(rows))
            length = 0  # the longest token sequence the screen saw (sets the verification chunk)
            for (s, weight), parts in zip(weighted, vocabs):
                loss, res = loss_fn(s, px, samples, full_spans, True, rows, image_index=torch.arange(len(rows)))
                (sign * loss.sum()).backward()
                current_loss += weight * loss.detach().float().cpu()
                tokens = getattr(getattr(res, "batch", None), "input_ids", None)
                length = max(length, tokens.shape[1] if tokens is not None else 1 << 30)
                emb, grad = res.embeddings.detach(), res.embeddings.grad
                mask = s.trigger_token_mask(tuple(px.shape[-2:]), samples, word_spans)
                mask = mask[:, getattr(res, "embedding_offset", 0):]  # embeddings may start after a shared prefix
                g = torch.stack([grad[r][mask[r]].mean(0) for r in range(len(rows))])
                e = torch.stack([emb[r][mask[r]].mean(0) for r in range(len(rows))])
                for vocab in parts:
                    scores = hotflip_scores(g, e, s.embedding_matrix().detach(), vocab)
                    top = scores.topk(min(candidates, len(vocab)), dim=1, largest=False).indices.cpu()
                    for r in range(len(rows)):
                        proposals[r].update(vocab.words[k] for k in top[r].tolist())
            # exact verification, batched over (sample, candidate) pairs; a job is (row, item, words, position)
            jobs, moves = [], []
            for r, i in enumerate(rows):
                for w in sorted(proposals[r] - {pert.triggers[i][slot]}):
                    words = list(pert.triggers[i])
                    words[slot] = w
                    if rules is None or rules.allowed(i, words):
                        jobs.append((r, i, words, pert.position_of(i)))
                if rules is not None and rules.natural and slot == 0:  # the whole trigger at another boundary
                    moves += [(r, i, list(pert.triggers[i]), p)
                              for p in rules.boundaries(pert.samples[i].question, pert.triggers[i])
                              if p != pert.position_of(i)]
            if single_token and jobs:
                keep = pert.single_token_words(surrogates, [i for _, i, _, _ in jobs], [w for _, _, w, _ in jobs],
                                               slot, positions=[p for _, _, _, p in jobs])
                rejected += len(jobs) - sum(keep)
                jobs = [job for job, good in zip(jobs, keep) if good]
            if single_token and moves:
                keep = pert.single_token_words(surrogates, [i for _, i, _, _ in moves], [w for _, _, w, _ in moves],
                                               positions=[p for _, _, _, p in moves])
                moves = [job for job, good in zip(moves, keep) if good]
            jobs += moves
            # signed value (lower wins), job, surrogate loss
            current_pen = [0.0] * len(rows) if rules is None else rules.penalty(rows, [q for q, _ in questions])
            best = {r: (sign * float(current_loss[r]) + current_pen[r], None, float(current_loss[r]))
                    for r in range(len(rows))}
            deferred: Dict[int, list] = {}  # filter_aware: every improving candidate, checked best first below
            # a contrastive loss couples a forward's rows: keep its fixed batch_size cuts, so its values stay
            chunks = ([(a, min(a + batch_size, len(jobs))) for a in range(0, len(jobs), batch_size)] if coupled
                      else owner_chunks([job[0] for job in jobs], verify_rows(batch_size, length, coupled)))
            with torch.no_grad():
                for start, end in chunks:
                    chunk = jobs[start:end]
                    owner = torch.tensor([r for r, _, _, _ in chunk])
                    cand_samples, cand_spans = [], []
                    for r, i, words, where in chunk:
                        text, span = pert.question(i, words, where)
                        cand_samples.append(pert.samples[i].with_(question=text))
                        cand_spans.append(span)
                    items = [i for _, i, _, _ in chunk]
                    total = sum(w * loss_fn(s, px, cand_samples, cand_spans, False, items,
                                            image_index=owner)[0].float().cpu() for s, w in weighted)
                    pen = [0.0] * len(chunk) if rules is None else \
                        rules.penalty(items, [c.question for c in cand_samples])
                    for k, (job, value, loss) in enumerate(zip(chunk, (sign * total).tolist(), total.tolist())):
                        value = value + pen[k]
                        r = job[0]
                        if rules is not None and rules.filter_aware:
                            if value < best[r][0] - 1e-7:
                                deferred.setdefault(r, []).append((value, start + k, job, loss, cand_spans[k],
                                                                   cand_samples[k].question))
                        elif value < best[r][0] - 1e-7:
                            best[r] = (value, job, loss)
            for r, options in deferred.items():
                for value, _, job, loss, span, text in sorted(options, key=lambda o: (o[0], o[1])):
                    if rules.passes(text, span):
                        best[r] = (value, job, loss)
                        break
            for r, i in enumerate(rows):
                before.append(float(current_loss[r]))
                _, job, loss = best[r]
                if job is not None:
                    pert.triggers[i] = job[2]
                    if pert.positions is not None:  # canonical, so the release reads the same position back
                        text, _ = pert.question(i, job[2], job[3])
                        pert.positions[i] = trigger_position_of(pert.samples[i].question, text, job[2])
                    changed += 1
                after.append(loss)
    return {"changed": changed, "loss_before": sum(before) / max(1, len(before)),
            "loss_after": sum(after) / max(1, len(after)), "rejected": rejected}
