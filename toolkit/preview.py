"""A contact sheet of a release, for a data owner to judge at a glance before publishing.

Each row is one sample: the source image, the released image, the change
amplified to full scale (|release - source|, largest channel, divided by the
budget in grey levels: white = the whole budget used) and the released
question with the inserted trigger words in red.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

import numpy as np

from .data import load_dataset
from .release import inserted_words, read_release

__all__ = ["contact_sheet"]


def _question(ax, fig, words, inserted) -> None:
    """Lay ``words`` out left to right in ``ax`` (wrapping), the ``inserted`` positions in red bold."""
    renderer = fig.canvas.get_renderer()
    width = ax.get_window_extent(renderer).width
    x, y = 0.0, 0.85
    for k, word in enumerate(words):
        hit = k in inserted
        t = ax.text(x, y, word + " ", transform=ax.transAxes, fontsize=9, va="top",
                    color="#d62728" if hit else "black", fontweight="bold" if hit else "normal")
        step = t.get_window_extent(renderer).width / width
        if x > 0 and x + step > 1.0:  # wrap
            t.set_position((0.0, y - 0.22))
            x, y = 0.0, y - 0.22
        x += step


def contact_sheet(release: Union[str, os.PathLike], source: Union[str, os.PathLike],
                  out: Union[str, os.PathLike], n: int = 8) -> Path:
    """Draw ``n`` samples (evenly spread over the release) of ``release`` beside their ``source``; returns
    the PNG path. Rows: source, release, amplified |delta|, question with inserted words in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    released = read_release(release)
    levels = max(1, int(json.loads((Path(release) / "manifest.json").read_text()).get("eps_levels") or 1))
    src = {s.id: s for s in load_dataset(source)}
    missing = [s.id for s in released if s.id not in src]
    if missing:
        raise ValueError(f"{source}: no source sample for release ids {missing[:3]}")
    picks = sorted({int(round(i)) for i in np.linspace(0, len(released) - 1, min(n, len(released)))})
    fig, axes = plt.subplots(len(picks), 4, figsize=(10, 1.9 * len(picks)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1, 3]})
    for row, i in enumerate(picks):
        rel = released[i]
        orig = src[rel.id]
        change = np.abs(rel.image.astype(np.int16) - orig.image.astype(np.int16)).max(-1) / levels
        for ax, img, title in ((axes[row, 0], orig.image, "source"), (axes[row, 1], rel.image, "release"),
                               (axes[row, 2], np.clip(change, 0, 1), f"|delta| / {levels}")):
            ax.imshow(img, cmap="magma" if img.ndim == 2 else None, vmin=0, vmax=1 if img.ndim == 2 else None,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
        axes[row, 3].axis("off")
    fig.tight_layout()  # before the words are laid out: their wrapping measures the final axes
    for row, i in enumerate(picks):
        rel = released[i]
        words = rel.question.split()
        added = inserted_words(src[rel.id].question.split(), words) or []
        start = next((k for k in range(len(words) - len(added) + 1) if words[k:k + len(added)] == added), 0) \
            if added else 0
        ax = axes[row, 3]
        _question(ax, fig, words, set(range(start, start + len(added))))
        ax.text(0.0, 0.05, f"{rel.id}  answer: {rel.answer}", transform=ax.transAxes, fontsize=8, color="0.4")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
