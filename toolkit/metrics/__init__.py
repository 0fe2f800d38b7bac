"""Metrics: efficacy (accuracy), stealth (PSNR, SSIM, L_inf, L_2, LPIPS, trigger length / edit distance, question
character edit distance, BLEU and perplexity), mechanism (attention mass, TV). Registry: ``METRICS`` (the names a
matrix spec's ``metrics:`` may list)."""
from .accuracy import Accuracy, answer_matches, evaluate_answers, normalize_answer
from .base import DEFAULT_METRICS, METRICS, Metric
from .image import L2, PSNR, SSIM, ImageMetric, LInf
from .mechanism import mechanism_metrics
from .perceptual import LPIPS, load_lpips
from .perplexity import (LMPerplexity, LMPerplexityClean, NgramPerplexity, NgramPerplexityClean,
                         crossfit_ngram_perplexity, lm_perplexity, perplexity_of)
from .text import (QuestionBLEU, QuestionCharEditDistance, TriggerEditDistance, TriggerLength, question_bleu,
                   trigger_removal, word_edit_distance)

__all__ = ["METRICS", "DEFAULT_METRICS", "Metric", "Accuracy", "ImageMetric", "PSNR", "SSIM", "LInf", "L2", "LPIPS",
           "load_lpips", "TriggerLength", "TriggerEditDistance", "QuestionCharEditDistance", "QuestionBLEU",
           "question_bleu", "NgramPerplexity", "NgramPerplexityClean", "LMPerplexity", "LMPerplexityClean",
           "crossfit_ngram_perplexity", "lm_perplexity", "perplexity_of", "trigger_removal",
           "word_edit_distance", "normalize_answer",
           "answer_matches", "evaluate_answers", "mechanism_metrics"]
