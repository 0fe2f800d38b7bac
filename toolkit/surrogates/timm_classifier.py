"""timm image classifier surrogate: the answer of a sample is its class.

A closed-set VQA task (digits, one fixed question) is image classification:
the classifier ignores the question and predicts one of its ``label_names``.
Unlearnable-example defenses built for classifiers (EMN, Huang et al. 2021;
TUE) optimise against such a model; this adapter lets them (and the victims
an attacker trains) share the :class:`Surrogate` interface with the LVLMs.

Loading is offline from a folder in timm's ``save_for_hf`` layout:
``config.json`` (``architecture``, ``num_classes``, ``label_names``, optional
``model_args``, and ``pretrained_cfg`` with ``input_size``, ``mean``, ``std``,
``interpolation``, ``crop_pct``) and ``model.safetensors`` or ``pytorch_model.bin``.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..data import VQASample
from .base import ConfigAndWeightsFolder, Reinitializable, Surrogate
from .processing import DifferentiableEvalTransform
from .registry import SURROGATES

__all__ = ["TimmSurrogate", "normalize_label", "TIMM_WEIGHT_NAMES"]

#: weight files, in order of preference (the first is what :meth:`TimmSurrogate.save` writes)
TIMM_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


def normalize_label(text: str) -> str:
    """How answers and label names are compared: stripped and lowercased."""
    return str(text).strip().lower()


def _label_list(label_names: Any, num_classes: int, where: str) -> List[str]:
    """``label_names`` (a list, or a dict class index -> name) as a list of ``num_classes`` names."""
    if isinstance(label_names, dict):
        names = [None] * num_classes
        for k, v in label_names.items():
            i = int(k)
            if not 0 <= i < num_classes:
                raise ValueError(f"{where}: label index {i} outside [0, {num_classes})")
            names[i] = str(v)
        missing = [i for i, n in enumerate(names) if n is None]
        if missing:
            raise ValueError(f"{where}: label_names has no name for classes {missing[:10]}")
        return names  # type: ignore[return-value]
    names = [str(v) for v in label_names]
    if len(names) != num_classes:
        raise ValueError(f"{where}: {len(names)} label_names for num_classes={num_classes}")
    return names


@SURROGATES.register("timm")
class TimmSurrogate(ConfigAndWeightsFolder, Reinitializable, Surrogate):
    """A timm classifier from a local folder; class index = answer (via ``label_names``).

    Args: see :class:`Surrogate` (``gradient_checkpointing`` uses timm's ``set_grad_checkpointing``).

    Image input: any size (N, 3, H, W) in [0, 1]; resized (to ``input_size / crop_pct``),
    center-cropped to ``input_size`` and normalised, differentiably, as timm's eval
    transform (``resolve_data_config`` + ``create_transform``) does on a PIL image.

    Loss: per-sample cross-entropy (nats) of the logits against the class of the
    sample's answer (matched to ``label_names`` after strip + lowercase; an unknown
    answer raises ``ValueError``); ``correct`` = argmax == that class. The question
    never enters the model (no ``"text"`` capability).
    """

    family = "timm"
    capabilities = frozenset({"image_grad", "trainable"})
    config_name = "config.json"
    weight_names = TIMM_WEIGHT_NAMES

    # ----------------------------------------------------------------- loading
    def _load(self) -> torch.nn.Module:
        import timm
        from timm.data import resolve_data_config

        config_file = self.path / "config.json"
        try:
            config = json.loads(config_file.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path}: no config.json (not a timm folder)") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_file}: not valid JSON ({exc})") from None
        if "pretrained_cfg" not in config and "architecture" in config:  # legacy single-dict layout
            legacy = dict(config)
            config = {"architecture": legacy.pop("architecture"), "pretrained_cfg": legacy}
            if "labels" in legacy:
                config["label_names"] = legacy.pop("labels")
        if "architecture" not in config:
            raise ValueError(f"{config_file}: no 'architecture' field (not a timm config)")
        pretrained_cfg = dict(config.get("pretrained_cfg", {}) or {})
        model_args = dict(config.get("model_args", {}) or {})
        num_classes = config.get("num_classes", pretrained_cfg.get("num_classes", model_args.get("num_classes")))
        if num_classes is None:
            raise ValueError(f"{config_file}: no num_classes")
        num_classes = int(num_classes)
        label_names = config.get("label_names", pretrained_cfg.get("label_names"))
        if not label_names:
            raise ValueError(f"{config_file}: no label_names; a timm surrogate maps answers to classes by name")
        self.config = config
        self.labels = _label_list(label_names, num_classes, str(config_file))
        self.label_index: Dict[str, int] = {}
        for i, name in enumerate(self.labels):
            key = normalize_label(name)
            if key in self.label_index:
                raise ValueError(f"{config_file}: label {name!r} appears twice (after strip + lowercase)")
            self.label_index[key] = i
        weights = next((self.path / n for n in TIMM_WEIGHT_NAMES if (self.path / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{self.path}: no weights (expected one of {', '.join(TIMM_WEIGHT_NAMES)})")
        model_args["num_classes"] = num_classes
        overlay = {k: v for k, v in pretrained_cfg.items()
                   if k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode", "num_classes",
                            "fixed_input_size", "pool_size", "first_conv", "classifier")}
        model = timm.create_model(config["architecture"], pretrained=False, pretrained_cfg_overlay=overlay,
                                  **model_args)
        model.load_state_dict(self._read_weights(weights), strict=True)
        if self.gradient_checkpointing:
            model.set_grad_checkpointing(True)
        self.data_config = resolve_data_config({}, model=model)
        self.image_processor = DifferentiableEvalTransform.from_timm(self.data_config)
        return model

    @staticmethod
    def _read_weights(path: Path) -> Dict[str, torch.Tensor]:
        """State dict from a ``.safetensors`` or ``torch.save`` file (``module.`` prefixes dropped)."""
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
        return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}

    def saved_config(self) -> Dict[str, Any]:
        """The loaded config with ``num_classes`` and ``label_names`` of the classes in use (what
        :meth:`save` writes as ``config.json`` next to ``model.safetensors``)."""
        config = copy.deepcopy(self.config)
        config["num_classes"] = len(self.labels)
        config["label_names"] = list(self.labels)
        return config

    def fresh_model(self) -> torch.nn.Module:
        """A randomly initialised timm model of the loaded architecture and classes (hook of ``reinitialize``)."""
        import timm

        args = dict(self.config.get("model_args", {}) or {})
        args["num_classes"] = len(self.labels)
        return timm.create_model(self.config["architecture"], pretrained=False, **args)

    # ----------------------------------------------------------------- inputs / labels
    def label_of(self, answer: str) -> int:
        """Class index of an answer (strip + lowercase match against ``label_names``).

        Raises:
            ValueError: the answer is not a label (the message lists some labels).
        """
        try:
            return self.label_index[normalize_label(answer)]
        except KeyError:
            shown = ", ".join(repr(n) for n in self.labels[:12]) + (", ..." if len(self.labels) > 12 else "")
            raise ValueError(f"answer {answer!r} is not one of the {len(self.labels)} class labels of timm "
                             f"surrogate {self.path} ({shown})") from None

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes), float32, differentiable in ``pixels``."""
        return self.model(self.pixel_inputs(pixels)).float()

    # ----------------------------------------------------------------- loss / answers
    def loss_and_correct(self, pixels: torch.Tensor, samples: Sequence[VQASample]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-sample cross-entropy (N,) against the answers' classes and argmax == class (N,) bool."""
        if len(samples) != pixels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} images for {len(samples)} samples")
        labels = torch.tensor([self.label_of(s.answer) for s in samples], device=self.device)
        logits = self.logits(pixels)
        return F.cross_entropy(logits, labels, reduction="none"), logits.argmax(dim=1) == labels

    @torch.no_grad()
    def answer(self, pixels: torch.Tensor, questions: Sequence[str], max_new_tokens: int = 8) -> List[str]:
        """Label name of the argmax class of each image; ``questions`` and ``max_new_tokens`` are ignored."""
        if pixels.shape[0] != len(questions):
            raise ValueError(f"{pixels.shape[0]} images for {len(questions)} questions")
        was_training = self.model.training
        self.model.eval()
        try:
            idx = self.logits(pixels).argmax(dim=1).tolist()
        finally:
            self.model.train(was_training)
        return [self.labels[i] for i in idx]

    # ----------------------------------------------------------------- training
    def trainable_parameters(self, mode: str) -> List[torch.nn.Parameter]:
        """``"full"``: every parameter; ``"projector"``: the classifier head (``get_classifier()``);
        ``"lora"``: not supported (ValueError)."""
        if mode == "full":
            return list(self.model.parameters())
        if mode == "projector":
            params = list(self.model.get_classifier().parameters())
            if not params:
                raise ValueError(f"{self.family}: {self.config['architecture']} has no classifier parameters")
            return params
        if mode == "lora":
            raise ValueError(f"{self.family}: LoRA adapters are not supported for timm surrogates; "
                             "use mode 'full' or 'projector'")
        raise ValueError(f"mode must be 'full', 'projector' or 'lora', got {mode!r}")
