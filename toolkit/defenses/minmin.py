"""The min-min bi-level engine every optimisation-based defense runs on.

min_theta E min_{delta, trigger} L(f_theta(x + delta, Insert(t, trigger)), y):
each round (a) trains the surrogate(s) a few steps on the current protected
data, then (b) updates the perturbations by PGD descent (and, for defenses with
text triggers, one HotFlip screen-and-verify pass) against the adapted,
frozen surrogate(s), then (c) scores the surrogate on protected and clean
copies of a fixed subset and decides whether to stop. EMN, TUE, REM, MEM and
MMGuard are subclasses that change only the objective or add a step.

Granularity: ``sample`` (one delta per sample) or ``class`` (one delta per
class; a class is a distinct answer, or one of ``answer_clusters`` k-means
clusters of the answers' token embeddings).

Checkpoint/resume: pass ``checkpoint=path`` to :meth:`Defense.protect`; the
whole state is saved after every round and an interrupted run resumes to the
same result as an uninterrupted one with the same seed.

Randomness: every random choice (batches, restarts, LoRA init, dropout) is
drawn from the config's seed; the global RNG is forked, never reseeded.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from ..checkpoint import RunCheckpoint, fingerprint
from ..data import VQASample
from ..engine import TrainState, adapted, dataset_pixels, gather, make_generator, pgd, project, shape_batches, \
    train_step
from ..registry import check_choice, check_range
from ..surrogates.base import LoraSettings
from ..triggers import hotflip_scores, insert_trigger, words_of
from .base import Defense, DefenseConfig, Proposal

__all__ = ["MinMinDefense", "MinMinConfig", "Perturbation"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MinMinConfig(DefenseConfig):
    """Settings of the min-min loop (units: pixels in [0, 1]).

    Attributes:
        granularity: "sample" or "class".
        answer_clusters: 0 = one class per distinct answer; k > 0 = k answer clusters.
        rounds: maximum rounds; train_steps: surrogate steps per round (Q);
        pgd_steps: PGD steps per batch per round (P); step_size: PGD sign step.
        pgd_fraction: share of samples whose perturbation is updated each round.
        batch_size / pgd_batch_size: training / PGD batch sizes.
        lr: surrogate learning rate (AdamW); train_mode: "full", "projector" or "lora"; lora_rank, lora_dropout.
        init: "zeros" or "uniform" (U(-eps, eps)) start of delta.
        stop_accuracy, stop_clean_accuracy, stop_loss, eval_size: stopping rule (see EMN).
        restart_every, restart_init: periodic surrogate restarts ("same" weights or "random" init).
    """

    granularity: str = "sample"
    answer_clusters: int = 0
    rounds: int = 30
    train_steps: int = 10
    pgd_steps: int = 5
    step_size: float = 2 / 255
    pgd_fraction: float = 1.0
    batch_size: int = 64
    pgd_batch_size: int = 128
    lr: float = 2e-3
    train_mode: str = "full"
    lora_rank: int = 8
    lora_dropout: float = 0.0
    init: str = "zeros"
    stop_accuracy: float = 0.99
    stop_clean_accuracy: float = 0.5
    stop_loss: float = 0.0
    eval_size: int = 256
    restart_every: int = 0
    restart_init: str = "same"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("granularity", self.granularity, {"sample", "class"})
        check_range("answer_clusters", self.answer_clusters, 0, 1 << 20)
        check_choice("train_mode", self.train_mode, {"full", "projector", "lora"})
        check_choice("init", self.init, {"zeros", "uniform"})
        check_range("rounds", self.rounds, 1, 100_000)
        check_range("train_steps", self.train_steps, 0, 100_000)
        check_range("pgd_steps", self.pgd_steps, 0, 100_000)
        check_range("step_size", self.step_size, 0, 1, low_open=True)
        check_range("pgd_fraction", self.pgd_fraction, 0, 1, low_open=True)
        check_range("batch_size", self.batch_size, 1, 1 << 20)
        check_range("pgd_batch_size", self.pgd_batch_size, 1, 1 << 20)
        check_range("lr", self.lr, 0, 1, low_open=True)
        check_range("lora_rank", self.lora_rank, 1, 4096)
        check_range("lora_dropout", self.lora_dropout, 0, 1, high_open=True)
        check_range("stop_accuracy", self.stop_accuracy, 0, 1)
        check_range("stop_clean_accuracy", self.stop_clean_accuracy, 0, 1)
        check_range("stop_loss", self.stop_loss, 0, 1e9)
        check_range("eval_size", self.eval_size, 1, 1 << 30)
        check_range("restart_every", self.restart_every, 0, 1 << 30)
        check_choice("restart_init", self.restart_init, {"same", "random"})
        if self.restart_init == "random" and self.train_mode != "full":
            raise ValueError("restart_init='random' needs train_mode='full' (a from-scratch surrogate)")


class Perturbation:
    """The variables a min-min defense optimises: image deltas and (optionally) per-sample triggers.

    Attributes:
        x: clean images, list of (3, H, W) in [0, 1].
        samples: the clean samples.
        labels: class of every sample (N,) long (answers or answer clusters).
        delta: per-sample list of (3, H, W), or a (C, 3, H, W) tensor for class-wise noise.
        triggers: per-sample word lists (None when the defense has no trigger).
        position: where triggers are inserted ("start", "end" or a word index).
        banned_words: words no trigger may contain (the answers' words).
    """

    def __init__(self, samples: Sequence[VQASample], labels: torch.Tensor, num_classes: int, granularity: str,
                 eps: float, init: str, gen: torch.Generator) -> None:
        self.samples = list(samples)
        self.x = dataset_pixels(self.samples)
        self.shapes = [tuple(s.image.shape) for s in self.samples]
        self.labels = labels
        self.classwise = granularity == "class"
        if self.classwise:
            if len(set(self.shapes)) > 1:
                raise ValueError(f"class-wise noise needs all images the same size; got {len(set(self.shapes))} "
                                 f"sizes (resize first or use granularity='sample')")
            shape = (num_classes,) + tuple(self.x[0].shape)
            self.delta = torch.zeros(shape) if init == "zeros" else (torch.rand(shape, generator=gen) * 2 - 1) * eps
        elif init == "zeros":
            self.delta = [torch.zeros_like(t) for t in self.x]
        else:
            self.delta = [(torch.rand(t.shape, generator=gen) * 2 - 1) * eps for t in self.x]
        self.triggers: Optional[List[List[str]]] = None
        self.position: Any = "start"
        #: words a trigger may not use: every word of every answer (a trigger must not carry a label)
        self.banned_words = set().union(*(words_of(s.answer) for s in self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    def deltas(self, idx: torch.Tensor) -> torch.Tensor:
        """Per-sample deltas of the items ``idx`` (B, 3, H, W)."""
        return self.delta[self.labels[idx]] if self.classwise else gather(self.delta, idx)

    def pixels(self, idx: torch.Tensor) -> torch.Tensor:
        """Protected pixels (B, 3, H, W) of the items ``idx``."""
        return (gather(self.x, idx) + self.deltas(idx)).clamp(0, 1)

    def question(self, i: int, words: Optional[Sequence[str]] = None) -> Tuple[str, Optional[Tuple[int, int]]]:
        """Question of item ``i`` with its trigger (or ``words``) inserted, and the trigger's character span."""
        words = self.triggers[i] if words is None and self.triggers is not None else (words or [])
        text, span, _ = insert_trigger(self.samples[i].question, words, self.position)
        return text, span

    def batch_samples(self, idx: torch.Tensor) -> Tuple[List[VQASample], List[Optional[Tuple[int, int]]]]:
        """Samples of ``idx`` with their current triggers inserted, and the trigger spans."""
        out, spans = [], []
        for i in idx.tolist():
            text, span = self.question(i)
            out.append(self.samples[i].with_(question=text) if span is not None else self.samples[i])
            spans.append(span)
        return out, spans

    def proposals(self) -> List[torch.Tensor]:
        """Final protected images (3, H, W) in [0, 1]."""
        return [self.pixels(torch.tensor([i]))[0] for i in range(len(self))]

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume (tensors and word lists)."""
        return {"delta": self.delta, "triggers": self.triggers}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.delta, self.triggers = state["delta"], state["triggers"]


def answer_classes(samples: Sequence[VQASample], clusters: int, surrogates, gen: torch.Generator
                   ) -> Tuple[torch.Tensor, int]:
    """Class of every sample: distinct answers, or ``clusters`` k-means clusters of answer embeddings.

    Clusters use the mean input-embedding of each answer's tokens under the first
    surrogate that has a tokenizer and an embedding matrix (k-means, 20 Lloyd
    iterations, seeded); otherwise answers are bucketed by their sorted order.
    """
    answers = sorted({s.answer for s in samples})
    if not clusters or clusters >= len(answers):
        index = {a: i for i, a in enumerate(answers)}
        return torch.tensor([index[s.answer] for s in samples]), len(answers)
    feats = None
    for s in surrogates:
        tok = getattr(s, "tokenizer", None)
        if tok is not None and hasattr(s, "embedding_matrix"):
            emb = s.embedding_matrix().detach().float().cpu()
            feats = torch.stack([emb[torch.tensor(_token_ids(tok, a))].mean(0) for a in answers])
            break
    if feats is None:
        assign = torch.arange(len(answers)) * clusters // len(answers)
    else:
        centers = feats[torch.randperm(len(answers), generator=gen)[:clusters]].clone()
        for _ in range(20):
            assign = torch.cdist(feats, centers).argmin(1)
            for c in range(clusters):
                if (assign == c).any():
                    centers[c] = feats[assign == c].mean(0)
    index = {a: int(assign[i]) for i, a in enumerate(answers)}
    return torch.tensor([index[s.answer] for s in samples]), clusters


def _token_ids(tokenizer, text: str) -> List[int]:
    """Ids of ``text`` without special tokens, for Hugging Face and open_clip tokenizers."""
    if hasattr(tokenizer, "convert_tokens_to_ids"):
        return list(tokenizer(" " + text, add_special_tokens=False)["input_ids"])
    return list(tokenizer.encode(text))


@contextlib.contextmanager
def _seeded(seed: int, devices: Sequence[torch.device]):
    """Fork the global RNGs (CPU and the given CUDA devices) and seed them."""
    cuda = sorted({d.index or 0 for d in devices if d.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(int(seed))
        yield


def _frozen_all(surrogates):
    stack = contextlib.ExitStack()
    for s in surrogates:
        stack.enter_context(s.frozen())
    return stack


class MinMinDefense(Defense):
    """Template of min-min defenses (see the module docstring).

    Subclasses override :meth:`objective` (the PGD loss), :meth:`train_pixels`
    (what the surrogate trains on), :meth:`text_step` (trigger updates) and
    :meth:`setup` (extra state) as needed; budgets are enforced by
    :meth:`Defense.protect`.
    """

    Config = MinMinConfig
    requires: Tuple[str, ...] = ("image_grad", "trainable")
    needs_surrogate = True

    # ------------------------------------------------------------------ hooks
    def setup(self, pert: Perturbation, surrogates, gen: torch.Generator) -> None:
        """Extra initialisation (e.g. triggers) before the first round."""

    def sample_loss(self, surrogates, pixels: torch.Tensor, samples: Sequence[VQASample]) -> torch.Tensor:
        """Per-sample loss averaged over the surrogates (uniform; use an Ensemble for weights)."""
        return sum(s.loss(pixels, samples) for s in surrogates) / len(surrogates)

    def objective(self, surrogates, x: torch.Tensor, d: torch.Tensor, samples: Sequence[VQASample],
                  labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Scalar the PGD step descends: sum of per-sample losses of (x + d) (B, 3, H, W) for items ``idx``."""
        return self.sample_loss(surrogates, (x + d).clamp(0, 1), samples).sum()

    def train_pixels(self, surrogate, pixels: torch.Tensor, samples: Sequence[VQASample]) -> torch.Tensor:
        """Pixels the surrogate is trained on (default: the protected pixels)."""
        return pixels

    def step_samples(self, samples: List[VQASample], gen: torch.Generator) -> List[VQASample]:
        """Samples the image step optimises against (default: as they are; MEM shuffles captions)."""
        return samples

    def text_step(self, rnd: int, surrogates, pert: Perturbation, gen: torch.Generator) -> None:
        """Trigger update after the image step (default: none)."""

    # ------------------------------------------------------------------ mechanics
    def image_step(self, surrogates, pert: Perturbation, gen: torch.Generator) -> None:
        """PGD descent on the deltas of a random ``pgd_fraction`` of the samples."""
        cfg = self.config
        n = len(pert)
        if not cfg.pgd_steps:
            return
        pgd_idx = torch.randperm(n, generator=gen)[:max(1, int(round(cfg.pgd_fraction * n)))]
        for idx in shape_batches(pert.shapes, cfg.pgd_batch_size, indices=pgd_idx):
            samples, _ = pert.batch_samples(idx)
            samples = self.step_samples(samples, gen)
            xb, labels = gather(pert.x, idx), pert.labels[idx]
            if pert.classwise:
                pert.delta = pgd(lambda d: self.objective(surrogates, xb, d[labels], samples, labels, idx), pert.delta,
                                 step_size=cfg.step_size, steps=cfg.pgd_steps,
                                 project_fn=lambda d: d.clamp(-cfg.eps, cfg.eps))
            else:
                new = pgd(lambda d: self.objective(surrogates, xb, d, samples, labels, idx), gather(pert.delta, idx),
                          step_size=cfg.step_size, steps=cfg.pgd_steps, project_fn=lambda d: project(d, xb, cfg.eps))
                for j, i in enumerate(idx.tolist()):
                    pert.delta[i] = new[j]

    def trigger_pass(self, surrogates, pert: Perturbation, indices: torch.Tensor, candidates: int,
                     loss_fn: Optional[Callable] = None, batch_size: int = 32, descend: bool = True) -> Dict[str, float]:
        """One HotFlip screen-and-verify pass over every trigger slot of the samples ``indices``.

        Screen: gradient of the per-sample loss w.r.t. each slot's token embedding,
        scored against every admissible token of each surrogate (top ``candidates``
        words per surrogate). Verify: the exact loss of every candidate question
        (re-tokenised), batched; a slot changes only if the best candidate beats
        the current word. ``loss_fn(surrogate, pixels, samples, spans, embedding_grad, items)``
        (spans = whole-trigger character spans, items = dataset indices) returns
        (per-sample loss (N,), ForwardResult); default: the answer loss.

        Returns counts: slots changed and mean loss before / after.
        """
        loss_fn = loss_fn or _answer_loss
        weighted = _flatten(surrogates)
        for s, _ in weighted:
            s.require("token_grad", "text", who=f"defense {self.name!r} (trigger search)")
        vocabs = [s.trigger_vocabulary().without(pert.banned_words) for s, _ in weighted]
        sign = 1.0 if descend else -1.0
        changed, before, after = 0, [], []
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
                "loss_after": sum(after) / max(1, len(after))}

    # ------------------------------------------------------------------ main loop
    def _protect(self, dataset, surrogates, progress, checkpoint=None):
        cfg = self.config
        gen = make_generator(cfg.seed)
        labels, num_classes = answer_classes(list(dataset), cfg.answer_clusters, surrogates, gen)
        pert = Perturbation(list(dataset), labels, num_classes, cfg.granularity, cfg.eps, cfg.init, gen)
        self.setup(pert, surrogates, gen)
        devices = [s.device for s in surrogates]
        ckpt = RunCheckpoint(checkpoint,
                             fingerprint({"defense": self.name, **cfg.to_dict()}, dataset, surrogates))
        n = len(pert)
        lora = LoraSettings(rank=cfg.lora_rank, alpha=2 * cfg.lora_rank, dropout=cfg.lora_dropout)
        history: List[Dict[str, float]] = []
        converged, start_round = False, 0
        with contextlib.ExitStack() as stack:
            with _seeded(int(torch.randint(0, 2 ** 31 - 1, (), generator=gen)), devices):
                states = [stack.enter_context(adapted(s, cfg.train_mode, lora)) for s in surrogates]
            optimizers = [torch.optim.AdamW(st.params, lr=cfg.lr, weight_decay=0.0) for st in states]
            stream = TrainState(pert.shapes, cfg.batch_size, gen)
            eval_idx = torch.randperm(n, generator=gen)[:cfg.eval_size]
            saved = ckpt.load()
            if saved is not None:
                start_round, converged, history = saved["round"], saved["converged"], saved["history"]
                pert.load_state_dict(saved["perturbation"])
                gen.set_state(saved["generator"])
                stream._queue = list(saved["queue"])
                for st, opt, values, opt_state in zip(states, optimizers, saved["params"], saved["optimizers"]):
                    with torch.no_grad():
                        for p, v in zip(st.params, values):
                            p.copy_(v.to(p.device, p.dtype))
                    opt.load_state_dict(opt_state)
                log.info("%s: resumed from %s after round %d", self.name, ckpt.path, start_round)
            bar = tqdm(range(start_round, cfg.rounds if not converged else start_round), desc=self.name,
                       disable=not progress, leave=False)
            for rnd in bar:
                with _seeded(int(torch.randint(0, 2 ** 31 - 1, (), generator=gen)), devices):
                    if cfg.restart_every and rnd and rnd % cfg.restart_every == 0:
                        seeds = [int(torch.randint(0, 2 ** 31 - 1, (), generator=gen))
                                 if cfg.restart_init == "random" else None for _ in states]
                        for st, seed in zip(states, seeds):
                            st.reset(seed)
                        optimizers = [torch.optim.AdamW(st.params, lr=cfg.lr, weight_decay=0.0) for st in states]
                    # (a) train the surrogate(s) on the current protected data
                    for s, opt, st in zip(surrogates, optimizers, states):
                        with s.training(st.params):
                            for _ in range(cfg.train_steps):
                                idx = stream.next()
                                samples, _ = pert.batch_samples(idx)
                                train_step(lambda px, smp: s.loss(self.train_pixels(s, px, smp), smp), opt,
                                           pert.pixels(idx), samples)
                    # (b) perturbation step(s) against the frozen, adapted surrogate(s)
                    with _frozen_all(surrogates):
                        self.image_step(surrogates, pert, gen)
                        self.text_step(rnd, surrogates, pert, gen)
                        # (c) score protected vs clean on a fixed subset
                        stats = self._score(surrogates, pert, eval_idx)
                stats["round"] = rnd + 1
                history.append(stats)
                bar.set_postfix(acc=f"{stats['accuracy']:.2f}", clean=f"{stats['clean_accuracy']:.2f}",
                                loss=f"{stats['loss']:.3f}")
                log.info("%s round %d: %s", self.name, rnd + 1, stats)
                converged = (stats["accuracy"] >= cfg.stop_accuracy
                             and stats["clean_accuracy"] <= cfg.stop_clean_accuracy) or stats["loss"] < cfg.stop_loss
                ckpt.save({"round": rnd + 1, "converged": converged, "history": history,
                           "perturbation": pert.state_dict(), "generator": gen.get_state(),
                           "queue": list(stream._queue),
                           "params": [[p.detach().cpu() for p in st.params] for st in states],
                           "optimizers": [opt.state_dict() for opt in optimizers]})
                if converged:
                    break
        info: Dict[str, Any] = {"rounds": len(history), "converged": converged, "history": history}
        if pert.triggers is None:
            return Proposal(pert.proposals(), info=info)
        return Proposal(pert.proposals(), questions=[pert.question(i)[0] for i in range(n)],
                        triggers=[{"words": list(w), "position": pert.position} for w in pert.triggers], info=info)

    @torch.no_grad()
    def _score(self, surrogates, pert: Perturbation, eval_idx: torch.Tensor) -> Dict[str, float]:
        accs, clean_accs, losses = [], [], []
        for idx in shape_batches(pert.shapes, self.config.pgd_batch_size, indices=eval_idx):
            samples, _ = pert.batch_samples(idx)
            clean = [pert.samples[i] for i in idx.tolist()]
            for s in surrogates:
                loss, correct = s.loss_and_correct(pert.pixels(idx), samples)
                _, clean_correct = s.loss_and_correct(gather(pert.x, idx), clean)
                losses.append(loss.float().cpu())
                accs.append(correct.float().cpu())
                clean_accs.append(clean_correct.float().cpu())
        return {"accuracy": float(torch.cat(accs).mean()), "clean_accuracy": float(torch.cat(clean_accs).mean()),
                "loss": float(torch.cat(losses).mean())}


def _flatten(surrogates) -> List[Tuple[Any, float]]:
    """(surrogate, weight) pairs with ensembles expanded into their weighted members (weights sum to 1)."""
    from ..surrogates.ensemble import Ensemble

    out: List[Tuple[Any, float]] = []
    for s in surrogates:
        if isinstance(s, Ensemble):
            out += [(m, w / len(surrogates)) for m, w in zip(s.members, s.weights)]
        else:
            out.append((s, 1.0 / len(surrogates)))
    return out


def _answer_loss(surrogate, pixels, samples, spans, embedding_grad, items=None):
    """The per-sample answer loss and the forward result (embeddings captured when asked)."""
    res = surrogate.forward_samples(pixels, samples, spans, embedding_grad=embedding_grad)
    return res.loss, res
