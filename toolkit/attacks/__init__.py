"""The attacker's side: countermeasures (``COUNTERMEASURES``) and the unauthorized fine-tuning."""
from .base import COUNTERMEASURES, Chain, Countermeasure, TrainingCountermeasure, Transform
from .fitting import DefenseRef, FitContext
from .finetune import FineTune, FineTuneResult
from .image_transforms import BitDepth, GaussianBlur, Grayscale, MedianFilter, RandomCropPad, Resize
from .jpeg import JPEG
from .lightshed import LightShed, PerturbationEstimator
from .mixing import MixClean
from ..surrogates.ngram import NgramLM
from .purification import DiffusionPurification, train_purifier
from .rare_words import DropRareWords
from .text_transforms import Lowercase, Punctuation, Whitespace
from .trigger_filter import TriggerFilter
from .training import AdversarialTraining, HeavyAugmentation

__all__ = ["COUNTERMEASURES", "Countermeasure", "FitContext", "DefenseRef", "Transform", "Chain", "JPEG", "TriggerFilter", "DiffusionPurification", "train_purifier", "LightShed", "PerturbationEstimator", "MixClean", "DropRareWords", "NgramLM", "Grayscale", "BitDepth", "GaussianBlur",
           "MedianFilter", "Resize", "RandomCropPad", "Punctuation", "Lowercase", "Whitespace", "FineTune",
           "FineTuneResult", "TrainingCountermeasure", "AdversarialTraining", "HeavyAugmentation"]
