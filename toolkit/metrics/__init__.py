"""Metrics: efficacy (accuracy), stealth (PSNR, SSIM, L_inf, L_2, trigger length / edit distance), mechanism
(attention mass, TV). Registry: ``METRICS`` (the names a matrix spec's ``metrics:`` may list)."""
from .accuracy import Accuracy, answer_matches, evaluate_answers, normalize_answer
from .base import DEFAULT_METRICS, METRICS, Metric
from .image import L2, PSNR, SSIM, LInf
from .mechanism import mechanism_metrics
from .text import TriggerEditDistance, TriggerLength, trigger_removal, word_edit_distance

__all__ = ["METRICS", "DEFAULT_METRICS", "Metric", "Accuracy", "PSNR", "SSIM", "LInf", "L2", "TriggerLength", "TriggerEditDistance", "trigger_removal",
           "word_edit_distance", "normalize_answer",
           "answer_matches", "evaluate_answers", "mechanism_metrics"]
