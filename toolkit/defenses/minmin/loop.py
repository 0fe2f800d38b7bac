"""The min-min loop (:class:`MinMinDefense`) every optimisation-based defense runs on.

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

Hooks receive the run state (:class:`~toolkit.defenses.minmin.state.MinMinRun`), never
read it from the defense object, so one defense object can run several protections.

Randomness: every random choice (batches, restarts, LoRA init, dropout) is
drawn from the config's seed; the global RNG is forked, never reseeded.

Robustness to purification (options of every min-min defense, see :mod:`toolkit.pixel_transforms`):
``eot`` runs each PGD step on the mean gradient over ``eot_samples`` random transforms T of the
protected image (:meth:`MinMinDefense.eot_objective`, which hands the hook ``objective`` the pair
(T(x), T(x + delta) - T(x)), so every subclass sees the transformed pixels without changing its
signature); ``low_frequency`` keeps delta in the lowest k x k DCT frequencies after every step
(:meth:`MinMinDefense.project_step`).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from ...checkpoint import RunCheckpoint, fingerprint
from ...data import VQASample
from ...distributed import World, current_world
from ...engine import (TrainState, adapted, clamp_pixels, make_generator, pgd, project, shape_batches,
                      train_step)
from ...pixel_transforms import EOT, low_pass
from ...surrogates.base import LoraSettings
from ...surrogates.ensemble import Ensemble, weighted_members
from ..base import Defense, Proposal
from .config import MinMinConfig
from .hotflip import TriggerLoss, answer_loss, trigger_pass
from .state import MinMinRun, Perturbation, answer_classes

__all__ = ["MinMinDefense"]

log = logging.getLogger(__name__)


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

    Subclasses override the hooks :meth:`setup` (extra state such as start triggers),
    :meth:`objective` (the PGD loss), :meth:`train_pixels` (what the surrogate trains on),
    :meth:`step_samples` (what the image step optimises against), :meth:`text_step` (trigger
    updates) and :meth:`trigger_objective` (the trigger search's loss). Every hook receives the
    :class:`MinMinRun`; budgets are enforced by :meth:`Defense.protect`.
    """

    Config = MinMinConfig
    requires: Tuple[str, ...] = ("image_grad", "trainable")
    needs_surrogate = True

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        if self.config.train_mode == "lora" and "lora" not in self.requires:  # the inner adaptation attaches LoRA
            self.requires = tuple(self.requires) + ("lora",)
        self.eot = EOT(self.config.eot)  # built from the config: no run state

    # ------------------------------------------------------------------ hooks
    def setup(self, run: MinMinRun) -> None:
        """Extra initialisation (e.g. triggers) before the first round."""

    def sample_loss(self, surrogates, pixels: torch.Tensor, samples: Sequence[VQASample]) -> torch.Tensor:
        """Per-sample loss averaged over the surrogates (uniform; use an Ensemble for weights)."""
        return sum(s.loss(pixels, samples) for s in surrogates) / len(surrogates)

    def objective(self, run: MinMinRun, x: torch.Tensor, d: torch.Tensor, samples: Sequence[VQASample],
                  idx: torch.Tensor) -> torch.Tensor:
        """Scalar the PGD step descends: sum of per-sample losses of (x + d) (B, 3, H, W) for items ``idx``
        (dataset indices; their classes are ``run.pert.labels[idx]``)."""
        return self.sample_loss(run.surrogates, clamp_pixels(x + d), samples).sum()

    def train_pixels(self, run: MinMinRun, surrogate, pixels: torch.Tensor,
                     samples: Sequence[VQASample]) -> torch.Tensor:
        """Pixels the surrogate is trained on (default: the protected pixels)."""
        return pixels

    def step_samples(self, run: MinMinRun, samples: List[VQASample]) -> List[VQASample]:
        """Samples the image step optimises against (default: as they are; MEM shuffles captions)."""
        return samples

    def text_step(self, run: MinMinRun) -> None:
        """Trigger update after the image step (default: none)."""

    def trigger_objective(self, run: MinMinRun) -> TriggerLoss:
        """The loss a trigger pass lowers (default: the answer NLL; see :func:`~.hotflip.trigger_pass`)."""
        return answer_loss

    # ------------------------------------------------------------------ mechanics
    def begin(self, dataset, surrogates) -> MinMinRun:
        """Classes, perturbation and :meth:`setup` of a new run on ``dataset`` (the loop's first step;
        also a way to drive the steps by hand)."""
        cfg = self.config
        gen = make_generator(cfg.seed)
        labels, num_classes = answer_classes(list(dataset), cfg.answer_clusters, surrogates, gen)
        pert = Perturbation(list(dataset), labels, num_classes, cfg.granularity, cfg.eps, cfg.init, gen,
                            store=cfg.store, store_dir=cfg.store_dir, store_dtype=cfg.store_dtype)
        if cfg.low_frequency and cfg.init != "zeros":  # a random start is band-limited too
            if pert.classwise:
                pert.delta = low_pass(pert.delta, cfg.low_frequency).clamp(-cfg.eps, cfg.eps)
            else:
                pert.map_deltas(lambda d, x: project(low_pass(d, cfg.low_frequency), x, cfg.eps))
        run = MinMinRun(list(surrogates), pert, gen)
        self.setup(run)
        return run

    def train_batches(self, pert: Perturbation, stream: TrainState, gen: torch.Generator) -> List[torch.Tensor]:
        """The batches (index tensors) one surrogate trains on in one round: ``train_steps`` batches of the
        endless stream (``train_unit="steps"``), or ``train_steps`` full shuffled passes over the data
        (``"passes"``, every sample once per pass: the paper's Q with its O(n Q) cost per round)."""
        cfg = self.config
        if cfg.train_unit == "passes":
            return [idx for _ in range(cfg.train_steps) for idx in shape_batches(pert.shapes, cfg.batch_size, gen)]
        return [stream.next() for _ in range(cfg.train_steps)]

    def lora_settings(self, surrogates) -> List[Any]:
        """The adapter settings of each surrogate (a list per ensemble, one per member), from ``lora_rank``
        (alpha = 2 x rank) and ``lora_dropout``."""
        cfg = self.config
        ranks = iter(cfg.lora_ranks(len(weighted_members(surrogates))))

        def one(_):
            r = next(ranks)
            return LoraSettings(rank=r, alpha=2 * r, dropout=cfg.lora_dropout)
        return [[one(m) for m in s.members] if isinstance(s, Ensemble) else one(s) for s in surrogates]

    def eot_objective(self, run: MinMinRun, x: torch.Tensor, d: torch.Tensor, samples: Sequence[VQASample],
                      idx: torch.Tensor) -> torch.Tensor:
        """:meth:`objective` under one random draw T of the ``eot`` set (plain :meth:`objective` without one).

        The hook receives (x', d') = (T(x), T(clip(x + d)) - T(x)), both (B, 3, H, W), so that x' + d' is the
        transformed protected image T(x + d) whatever the subclass builds from the pair, T(x) is the clean
        image under the same T (MMGuard-CRS's clean pass) and d' is the perturbation as it survives T, in the
        transformed frame (TUE's separability term, MMGuard-BPH's perturbation tokens). Gradients reach ``d``
        through T (the identity for JPEG's straight-through codec). An identity draw calls the hook with
        (x, d) itself, and a set that cannot vary draws no random number, so ``eot: [{name: identity}]``
        reproduces plain PGD bit for bit.
        """
        view = self.eot.draw(run.gen)
        if view is None:
            return self.objective(run, x, d, samples, idx)
        with torch.no_grad():
            tx = view(x)
        return self.objective(run, tx, view(clamp_pixels(x + d)) - tx, samples, idx)

    def project_step(self, d: torch.Tensor, x: Optional[torch.Tensor]) -> torch.Tensor:
        """The projection after each PGD step: low-pass to the ``low_frequency`` band (if set), then clip to the
        L_inf ball and, for per-sample deltas (``x`` given, (B, 3, H, W)), to valid pixels. The clipping comes
        last so the budget always holds; it can put back a little high frequency where the low-passed delta
        exceeds eps or leaves [0, 1] (far less than a sign step adds)."""
        cfg = self.config
        if cfg.low_frequency:
            d = low_pass(d, cfg.low_frequency)
        return d.clamp(-cfg.eps, cfg.eps) if x is None else project(d, x, cfg.eps)

    def image_step(self, run: MinMinRun) -> None:
        """PGD descent on the deltas of a random ``pgd_fraction`` of the samples (with ``eot``: on the mean
        gradient over ``eot_samples`` transforms per step, see :meth:`eot_objective`)."""
        cfg, pert, gen = self.config, run.pert, run.gen
        n = len(pert)
        if not cfg.pgd_steps:
            return
        draws = cfg.eot_samples if self.eot else 1
        pgd_idx = torch.randperm(n, generator=gen)[:max(1, int(round(cfg.pgd_fraction * n)))]
        batches = shape_batches(pert.shapes, cfg.pgd_batch_size, indices=pgd_idx)
        # data-parallel: per-sample deltas are stepped by the batch's owner only (class-wise deltas are one
        # variable every batch steps in turn, so every rank steps every batch, identically)
        shard = run.world is not None and not pert.classwise
        for k, idx in enumerate(batches):
            if shard and not run.world.owns(k):
                self.replay_image_draws(run, idx)
                continue
            samples, _ = pert.batch_samples(idx)
            samples = self.step_samples(run, samples)
            xb, labels = pert.clean(idx), pert.labels[idx]
            if pert.classwise:
                pert.delta = pgd(lambda d: self.eot_objective(run, xb, d[labels], samples, idx), pert.delta,
                                 step_size=cfg.step_size, steps=cfg.pgd_steps, samples=draws,
                                 project_fn=lambda d: self.project_step(d, None))
            else:
                new = pgd(lambda d: self.eot_objective(run, xb, d, samples, idx), pert.deltas(idx),
                          step_size=cfg.step_size, steps=cfg.pgd_steps, samples=draws,
                          project_fn=lambda d: self.project_step(d, xb))
                pert.set_deltas(idx, new)
        if shard:
            run.world.share_tensors(pert.delta, batches)

    def replay_image_draws(self, run: MinMinRun, idx: torch.Tensor) -> None:
        """Draw from ``run.gen`` exactly what :meth:`image_step` draws for the batch ``idx``, without computing
        anything: a rank of a data-parallel run skips the batches other ranks step but keeps the generator
        in step with theirs (and with the single-process run). The default replays :meth:`step_samples`
        (MEM's caption shuffle) and the ``eot`` draws (``pgd_steps`` x ``eot_samples`` calls of
        :meth:`eot_objective`); a subclass whose :meth:`objective` draws from ``run.gen`` must replay those
        draws here too."""
        cfg = self.config
        samples, _ = run.pert.batch_samples(idx)
        self.step_samples(run, samples)
        for _ in range(cfg.pgd_steps * (cfg.eot_samples if self.eot else 1)):
            self.eot.draw(run.gen)

    def trigger_pass(self, run: MinMinRun, indices: torch.Tensor, candidates: int,
                     loss_fn: Optional[TriggerLoss] = None, batch_size: int = 32,
                     descend: bool = True, single_token: bool = True) -> Dict[str, float]:
        """One HotFlip screen-and-verify pass over the trigger slots of ``indices`` (see
        :func:`~.hotflip.trigger_pass`; ``loss_fn`` defaults to :meth:`trigger_objective`). The counts
        (``changed``, ``loss_before``, ``loss_after``) are returned and recorded in ``run.stats`` with a
        ``trigger_`` prefix."""
        search = dict(loss_fn=loss_fn or self.trigger_objective(run), batch_size=batch_size, descend=descend,
                      who=f"defense {self.name!r} (trigger search)", single_token=single_token)
        if run.world is None:
            stats = trigger_pass(run.surrogates, run.pert, indices, candidates, **search)
        else:
            stats = self.shared_trigger_pass(run, indices, candidates, search)
        run.stats.update({f"trigger_{k}": v for k, v in stats.items()})
        return stats

    def shared_trigger_pass(self, run: MinMinRun, indices: torch.Tensor, candidates: int,
                            search: Dict[str, Any]) -> Dict[str, float]:
        """:meth:`trigger_pass` in a data-parallel run: the pass's batches (those of one process, so every
        sample is searched in the batch it would be in one process) are dealt to the ranks, each rank
        searches its own batches' triggers, and the triggers (and natural-insertion positions) are
        all-gathered. The counts are summed over the ranks, the mean losses weighted by slot visits."""
        world, pert = run.world, run.pert
        batches = shape_batches(pert.shapes, search["batch_size"], indices=indices)
        mine = [idx for k, idx in enumerate(batches) if world.owns(k)]
        items = torch.cat(mine).tolist() if mine else []
        visits = sum(len(pert.triggers[i]) for i in items)
        stats = {"changed": 0, "loss_before": 0.0, "loss_after": 0.0, "rejected": 0}
        if items:
            stats = trigger_pass(run.surrogates, pert, torch.tensor(items), candidates, **search)
        world.share_objects(pert.triggers, items)
        if pert.positions is not None:
            world.share_objects(pert.positions, items)
        parts = world.gather_objects((visits, stats))
        total = max(1, sum(v for v, _ in parts))
        return {"changed": sum(st["changed"] for _, st in parts),
                "loss_before": sum(v * st["loss_before"] for v, st in parts) / total,
                "loss_after": sum(v * st["loss_after"] for v, st in parts) / total,
                "rejected": sum(st["rejected"] for _, st in parts)}

    # ------------------------------------------------------------------ main loop
    def _protect(self, dataset, surrogates, progress, checkpoint=None):
        cfg = self.config
        run = self.begin(dataset, surrogates)
        run.world = world = current_world()
        main = world is None or world.is_main
        pert, gen = run.pert, run.gen
        devices = [s.device for s in surrogates]
        ckpt = RunCheckpoint(checkpoint,
                             fingerprint({"defense": self.name, **cfg.to_dict()}, dataset, surrogates))
        if world is not None:
            world.check_same(ckpt.key, "the data, defense config and surrogates")
        n = len(pert)
        loras = self.lora_settings(surrogates) if cfg.train_mode == "lora" else [None] * len(surrogates)
        history: List[Dict[str, float]] = []
        converged, start_round = False, 0
        with contextlib.ExitStack() as stack:
            with _seeded(int(torch.randint(0, 2 ** 31 - 1, (), generator=gen)), devices):
                states = [stack.enter_context(adapted(s, cfg.train_mode, lora)) for s, lora in zip(surrogates, loras)]
            optimizers = [torch.optim.AdamW(st.params, lr=cfg.lr, weight_decay=0.0) for st in states]
            stream = TrainState(pert.shapes, cfg.batch_size, gen)
            eval_idx = torch.randperm(n, generator=gen)[:cfg.eval_size]
            saved = ckpt.load()
            if saved is not None:
                start_round, converged, history = saved["round"], saved["converged"], saved["history"]
                pert.load_state_dict(saved["perturbation"])
                gen.set_state(saved["generator"])
                stream.restore(saved["queue"])
                for st, opt, values, opt_state in zip(states, optimizers, saved["params"], saved["optimizers"]):
                    with torch.no_grad():
                        for p, v in zip(st.params, values):
                            p.copy_(v.to(p.device, p.dtype))
                    opt.load_state_dict(opt_state)
                if main:
                    log.info("%s: resumed from %s after round %d", self.name, ckpt.path, start_round)
            bar = tqdm(range(start_round, cfg.rounds if not converged else start_round), desc=self.name,
                       disable=not (progress and main), leave=False)
            for rnd in bar:
                run.round, run.stats = rnd, {}
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
                            for idx in self.train_batches(pert, stream, gen):
                                loss_fn = lambda px, smp: s.loss(self.train_pixels(run, s, px, smp), smp)  # noqa: E731
                                # a contrastive loss needs the whole batch: every rank steps it alike
                                if world is None or any(m.contrastive for m, _ in weighted_members([s])):
                                    samples, _ = pert.batch_samples(idx)
                                    train_step(loss_fn, opt, pert.pixels(idx), samples)
                                else:  # this rank's slice of the batch; gradients averaged over the ranks
                                    part, share = world.split_batch(idx)
                                    samples, _ = pert.batch_samples(part)
                                    train_step(loss_fn, opt, pert.pixels(part) if len(part) else None, samples,
                                               reduce_grads=lambda ps, share=share: world.average_gradients(ps, share))
                    # (b) perturbation step(s) against the frozen, adapted surrogate(s)
                    with _frozen_all(surrogates):
                        run.new_step()
                        self.image_step(run)
                        run.new_step()
                        self.text_step(run)
                        run.new_step()
                        # (c) score protected vs clean on a fixed subset
                        stats = {**self._score(surrogates, pert, eval_idx, world), **run.stats}
                    run.new_step()
                stats["round"] = rnd + 1
                history.append(stats)
                bar.set_postfix(acc=f"{stats['accuracy']:.2f}", clean=f"{stats['clean_accuracy']:.2f}",
                                loss=f"{stats['loss']:.3f}")
                if main:
                    log.info("%s round %d: %s", self.name, rnd + 1, stats)
                converged = (stats["accuracy"] >= cfg.stop_accuracy
                             and stats["clean_accuracy"] <= cfg.stop_clean_accuracy) or stats["loss"] < cfg.stop_loss
                if main:  # every rank holds the same state; rank 0 writes it
                    ckpt.save({"round": rnd + 1, "converged": converged, "history": history,
                               "perturbation": pert.state_dict(), "generator": gen.get_state(),
                               "queue": stream.pending(),
                               "params": [[p.detach().cpu() for p in st.params] for st in states],
                               "optimizers": [opt.state_dict() for opt in optimizers]})
                if converged:
                    break
        info: Dict[str, Any] = {"rounds": len(history), "converged": converged, "history": history}
        if pert.triggers is None:
            return Proposal(pert.proposals(), info=info)
        return Proposal(pert.proposals(), questions=[pert.question(i)[0] for i in range(n)],
                        triggers=[{"words": list(w), "position": pert.position_of(i)} for i, w in enumerate(pert.triggers)],
                        info=info)

    @torch.no_grad()
    def _score(self, surrogates, pert: Perturbation, eval_idx: torch.Tensor,
               world: Optional[World] = None) -> Dict[str, float]:
        accs, clean_accs, losses = [], [], []
        for k, idx in enumerate(shape_batches(pert.shapes, self.config.pgd_batch_size, indices=eval_idx)):
            if world is not None and not world.owns(k):  # another rank's batch: zeros, its values summed in below
                for out in (losses, accs, clean_accs):
                    out.extend(torch.zeros(len(idx)) for _ in surrogates)
                continue
            samples, _ = pert.batch_samples(idx)
            clean = [pert.samples[i] for i in idx.tolist()]
            for s in surrogates:
                loss, correct = s.loss_and_correct(pert.pixels(idx), samples)
                _, clean_correct = s.loss_and_correct(pert.clean(idx), clean)
                losses.append(loss.float().cpu())
                accs.append(correct.float().cpu())
                clean_accs.append(clean_correct.float().cpu())
        if world is not None:  # every value is filled by exactly one rank, so the sum is exact
            accs, clean_accs, losses = world.sum(torch.stack([torch.cat(accs), torch.cat(clean_accs),
                                                              torch.cat(losses)])).unbind(0)
            accs, clean_accs, losses = [accs], [clean_accs], [losses]
        return {"accuracy": float(torch.cat(accs).mean()), "clean_accuracy": float(torch.cat(clean_accs).mean()),
                "loss": float(torch.cat(losses).mean())}
