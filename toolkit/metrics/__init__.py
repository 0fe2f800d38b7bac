"""Metrics: efficacy (accuracy), stealth (PSNR, SSIM, L_inf, L_2), mechanism (attention mass, TV). Registry: ``METRICS``."""
from .accuracy import Accuracy, answer_matches, evaluate_answers, normalize_answer
from .base import METRICS, Metric
from .image import L2, PSNR, SSIM, LInf
from .mechanism import mechanism_metrics

__all__ = ["METRICS", "Metric", "Accuracy", "PSNR", "SSIM", "LInf", "L2", "normalize_answer",
           "answer_matches", "evaluate_answers", "mechanism_metrics"]
