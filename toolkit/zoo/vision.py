"""Dense visual pretraining of a zoo model's image encoder: the stage a real LVLM gets from its CLIP tower.

A real LLaVA starts from a CLIP ViT that has already seen hundreds of millions of
captioned images; a tiny zoo model's encoder starts from random weights and learns to
see only through the one-word answers of its LVLM pretraining, which is slow (shapes
reach about 68% there after 30 minutes, docs/results/testbed-probes.md). This stage
trains the image encoder *and* the projector first, with dense labels: for every cell of
a scene's grid the shape, colour and size of its object (or "empty"), and for a sign its
word and text colour. Linear heads read the model's own projected image tokens
(``get_image_features``, the vectors the language model will see), pooled over the tokens
whose box centre falls in the cell (:meth:`toolkit.surrogates.base.Surrogate.image_token_regions`),
so one code path serves every family (LLaVA, Qwen2-VL, Gemma 3). The heads are thrown
away afterwards.

The labels are what a caption of the picture says (the ``caption`` pretraining type says
the same in words), never a downstream question or answer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..attacks.finetune import learning_rate_schedule
from ..registry import Config, check_range
from ..datasets.vocab import COLOUR_NAMES, SHAPES, SIZES, WORDS

__all__ = ["VisionStage", "VisionHeads", "vision_labels", "head_targets", "cell_pooling", "pretrain_vision",
           "vision_scores"]

#: label of a cell without an object / of an attribute that does not apply (ignored by the loss)
IGNORE = -100
#: the per-cell heads that ``VisionStage.dense`` also scores on each image token
TOKEN_KEYS: Tuple[str, ...] = ("shape", "colour", "size")


@dataclass(frozen=True, kw_only=True)
class VisionStage(Config):
    """Settings of the dense visual pretraining stage (``ZooRecipe.vision``).

    ``n_train`` images (scenes and signs of the recipe's layout, drawn with ``seed``),
    ``epochs`` passes at batch ``batch_size``, AdamW at peak ``lr`` with a linear warm-up
    over the first ``warmup`` share of the steps, then cosine decay to 0. ``where``: add the
    per-token cell head; ``dense``: also score the object heads on every token (see the fields).
    """

    n_train: int = 24000
    n_test: int = 600
    epochs: int = 10
    lr: float = 2e-3
    batch_size: int = 64
    warmup: float = 0.05
    weight_decay: float = 0.01
    seed: int = 77
    #: also train a per-token head that names the grid cell each image token lies in, so the projected tokens
    #: carry their place in their values (a language model's attention with rotary positions moves content, not
    #: where it came from); off by default (``llava-d`` to ``llava-f`` are built with it)
    where: bool = False
    #: also apply the shape / colour / size heads to every image token on its own (target: the object of the
    #: token's cell, or "empty"), so each token carries the whole object (colour *and* shape) rather than the
    #: cell's tokens doing so only on average; off by default (``llava-e`` and ``llava-f`` are built with it)
    dense: bool = False

    def __post_init__(self) -> None:
        for key in ("n_train", "n_test", "epochs", "batch_size"):
            check_range(key, getattr(self, key), 1, 10_000_000)
        check_range("lr", self.lr, 0, 1, low_open=True)
        check_range("warmup", self.warmup, 0, 1, high_open=True)
        check_range("weight_decay", self.weight_decay, 0, 1)
        check_range("seed", self.seed, 0, 2 ** 63 - 1)


def vision_labels(samples: Sequence, grid: int) -> torch.Tensor:
    """(N, 3 * grid**2 + 2) long labels from each sample's ``meta["scene"]``.

    Per cell (row-major) the indices of shape, colour and size in ``SHAPES`` / ``COLOUR_NAMES`` /
    ``SIZES``, or ``len(...)`` ("empty") where the cell holds no object; then a sign's word
    (``WORDS``) and text colour. Attributes that do not apply to the domain are ``IGNORE``.
    """
    rows = []
    empty = [len(SHAPES), len(COLOUR_NAMES), len(SIZES)]
    for sample in samples:
        scene = sample.meta["scene"]
        if scene["domain"] == "scenes":
            cells = [list(empty) for _ in range(grid * grid)]
            for obj in scene["objects"]:
                cells[obj["row"] * grid + obj["col"]] = [SHAPES.index(obj["shape"]), COLOUR_NAMES.index(obj["colour"]),
                                                         SIZES.index(obj["size"])]
            rows.append(sum(cells, []) + [IGNORE, IGNORE])
        elif scene["domain"] == "signs":
            rows.append([IGNORE] * (3 * grid * grid) + [WORDS.index(scene["word"]),
                                                         COLOUR_NAMES.index(scene["text_colour"])])
        else:
            raise ValueError(f"sample {sample.id}: no vision labels for domain {scene['domain']!r}")
    return torch.tensor(rows, dtype=torch.long)


def cell_pooling(surrogate, image_size: int, grid: int) -> torch.Tensor:
    """(grid**2, T) averaging weights: image token t belongs to the cell that holds its box centre.

    Raises ``ValueError`` when a cell gets no token (tokens coarser than the grid) or the model has a
    token whose box spans the whole image (a CLS token: it belongs to no cell).
    """
    boxes = surrogate.image_token_regions(image_size, image_size).float()
    centre_y, centre_x = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    side = image_size / grid
    whole = ((boxes[:, 2] - boxes[:, 0]) >= image_size) & ((boxes[:, 3] - boxes[:, 1]) >= image_size)
    if bool(whole.any()):
        raise ValueError("the model has an image token that covers the whole image; cell pooling needs "
                         "patch tokens only")
    cell = (centre_y // side).clamp(max=grid - 1).long() * grid + (centre_x // side).clamp(max=grid - 1).long()
    weights = torch.stack([(cell == c).float() for c in range(grid * grid)])
    if bool((weights.sum(1) == 0).any()):
        raise ValueError(f"some cells of a {grid} x {grid} grid hold no image token "
                         f"({surrogate.num_image_tokens(image_size, image_size)} tokens)")
    return weights / weights.sum(1, keepdim=True)


class VisionHeads(torch.nn.Module):
    """Linear read-outs of pooled image tokens (hidden ``dim``): per cell shape / colour / size (+ empty),
    per image word and text colour; with ``cells`` > 0 also each token's own cell (``where``, (N, T, cells));
    with ``dense`` the same object heads on each token alone (``shape_token`` etc., (N, T, k))."""

    def __init__(self, dim: int, cells: int = 0, dense: bool = False) -> None:
        super().__init__()
        self.shape = torch.nn.Linear(dim, len(SHAPES) + 1)
        self.colour = torch.nn.Linear(dim, len(COLOUR_NAMES) + 1)
        self.size = torch.nn.Linear(dim, len(SIZES) + 1)
        self.word = torch.nn.Linear(dim, len(WORDS))
        self.text_colour = torch.nn.Linear(dim, len(COLOUR_NAMES))
        self.where = torch.nn.Linear(dim, cells) if cells else None
        self.dense = dense

    def forward(self, tokens: torch.Tensor, pooling: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``tokens`` (N, T, D), ``pooling`` (C, T) -> logits: shape / colour / size (N, C, k), word /
        text_colour (N, k), ``where`` (N, T, C) and the per-token object logits (N, T, k) when the heads have
        them."""
        cells = torch.einsum("ct,ntd->ncd", pooling.to(tokens.dtype), tokens)
        whole = tokens.mean(1)
        out = {"shape": self.shape(cells), "colour": self.colour(cells), "size": self.size(cells),
               "word": self.word(whole), "text_colour": self.text_colour(whole)}
        if self.where is not None:
            out["where"] = self.where(tokens)
        if self.dense:
            out.update({f"{key}_token": getattr(self, key)(tokens) for key in TOKEN_KEYS})
        return out


def head_targets(labels: torch.Tensor, cells: int, pooling: Optional[torch.Tensor] = None,
                 dense: bool = False) -> Dict[str, torch.Tensor]:
    """Each head's targets from (N, 3 * cells + 2) :func:`vision_labels` rows: ``shape`` / ``colour`` / ``size``
    (N, cells), ``word`` / ``text_colour`` (N,); with the (cells, T) ``pooling`` of :func:`cell_pooling` also
    ``where``, the cell of each image token (N, T), and with ``dense`` as well ``shape_token`` /
    ``colour_token`` / ``size_token``, the object of each token's cell (N, T)."""
    per_cell = labels[:, :3 * cells].view(-1, cells, 3)
    out = {"shape": per_cell[..., 0], "colour": per_cell[..., 1], "size": per_cell[..., 2],
           "word": labels[:, -2], "text_colour": labels[:, -1]}
    if dense and pooling is None:
        raise ValueError("dense targets need the pooling (the cell of each image token)")
    if pooling is not None:
        cell_of_token = pooling.argmax(0)
        out["where"] = cell_of_token.expand(labels.shape[0], -1)
        if dense:
            out.update({f"{key}_token": out[key][:, cell_of_token] for key in TOKEN_KEYS})
    return out


def _image_tokens(surrogate, pixels: torch.Tensor) -> torch.Tensor:
    """(N, T, D) projected image tokens of (N, 3, H, W) pixels in [0, 1] (what the language model sees)."""
    out = surrogate.model.get_image_features(**surrogate.pixel_inputs(pixels))
    feats = getattr(out, "pooler_output", out)
    return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats


def _pixels(samples: Sequence) -> torch.Tensor:
    return torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float().div(255)


def _loss(logits: Dict[str, torch.Tensor], targets: Dict[str, torch.Tensor]) -> torch.Tensor:
    terms = []
    for key, logit in logits.items():
        target = targets[key].reshape(-1)
        if bool((target != IGNORE).any()):
            terms.append(torch.nn.functional.cross_entropy(logit.reshape(target.numel(), -1), target,
                                                           ignore_index=IGNORE))
    return torch.stack(terms).sum()


def pretrain_vision(surrogate, samples: Sequence, grid: int, stage: VisionStage,
                    held_out: Sequence = ()) -> Tuple[List[float], Dict[str, float]]:
    """Train ``surrogate``'s image encoder and projector on ``samples`` (scene / sign VQA samples whose
    ``meta["scene"]`` gives the labels) with throw-away :class:`VisionHeads`.

    Only parameters used by ``get_image_features`` receive gradients (the language model is untouched).
    Returns the mean loss of every epoch and :func:`vision_scores` on ``held_out`` (empty if none).
    """
    image_size = int(samples[0].image.shape[0])
    pooling = cell_pooling(surrogate, image_size, grid)
    model = surrogate.model
    first = next(model.parameters())
    dtype, device = first.dtype, first.device
    pooling = pooling.to(device)
    with torch.random.fork_rng(devices=[]):  # the heads' init depends on the stage's seed only (made on CPU)
        torch.manual_seed(stage.seed)
        dim = int(_image_tokens(surrogate, _pixels(samples[:1]).to(device, dtype)).shape[-1])
        heads = VisionHeads(dim, grid * grid if stage.where else 0, dense=stage.dense).to(device, dtype)
    labels = vision_labels(samples, grid).to(device)
    images = torch.from_numpy(np.stack([s.image for s in samples]))  # uint8, (N, H, W, 3): a quarter of float
    model.train()
    params = [p for p in model.parameters() if p.requires_grad] + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    per_epoch = max(1, len(samples) // stage.batch_size)
    total = stage.epochs * per_epoch
    scheduler = learning_rate_schedule(optimizer, "cosine", total, stage.warmup)
    generator = torch.Generator().manual_seed(stage.seed)
    losses: List[float] = []
    for _ in range(stage.epochs):
        order = torch.randperm(len(samples), generator=generator)
        running = 0.0
        for step in range(per_epoch):
            batch = order[step * stage.batch_size:(step + 1) * stage.batch_size]
            pixels = images[batch].permute(0, 3, 1, 2).to(device, dtype).div(255)
            loss = _loss(heads(_image_tokens(surrogate, pixels), pooling),
                         head_targets(labels[batch.to(device)], grid * grid,
                                      pooling if stage.where or stage.dense else None, dense=stage.dense))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += float(loss.detach())
        losses.append(running / per_epoch)
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    scores = vision_scores(surrogate, heads, held_out, grid, pooling) if len(held_out) else {}
    return losses, scores


@torch.no_grad()
def vision_scores(surrogate, heads: VisionHeads, samples: Sequence, grid: int, pooling: torch.Tensor,
                  batch_size: int = 256) -> Dict[str, float]:
    """Held-out accuracy of each head: ``shape`` / ``colour`` / ``size`` over occupied cells, ``empty``
    over empty cells (the shape head's "empty" class), ``word`` / ``text_colour`` over signs, ``where``
    (each token's cell) over all tokens and ``shape_token`` / ``colour_token`` / ``size_token`` over the tokens
    of occupied cells when the heads have them."""
    first = next(surrogate.model.parameters())
    labels = vision_labels(samples, grid)
    per_token = heads.where is not None or heads.dense
    targets = head_targets(labels, grid * grid, pooling.cpu() if per_token else None, dense=heads.dense)
    logits: Dict[str, List[torch.Tensor]] = {}
    for start in range(0, len(samples), batch_size):
        pixels = _pixels(samples[start:start + batch_size]).to(first.device, first.dtype)
        out = heads(_image_tokens(surrogate, pixels), pooling.to(first.device))
        for key, value in out.items():
            logits.setdefault(key, []).append(value.argmax(-1).cpu())
    preds = {k: torch.cat(v) for k, v in logits.items()}
    occupied = (targets["shape"] >= 0) & (targets["shape"] < len(SHAPES))
    masks = {"shape": occupied, "colour": occupied, "size": occupied, "empty": targets["shape"] == len(SHAPES),
             "word": targets["word"] >= 0, "text_colour": targets["text_colour"] >= 0}
    if heads.where is not None:
        masks["where"] = torch.ones_like(targets["where"], dtype=torch.bool)
    if heads.dense:
        on_object = (targets["shape_token"] >= 0) & (targets["shape_token"] < len(SHAPES))
        masks.update({f"{key}_token": on_object for key in TOKEN_KEYS})
    scores = {}
    for key, mask in masks.items():
        pred, gold = (preds["shape"], targets["shape"]) if key == "empty" else (preds[key], targets[key])
        if bool(mask.any()):
            scores[key] = round(float((pred == gold)[mask].float().mean()), 4)
    return scores
