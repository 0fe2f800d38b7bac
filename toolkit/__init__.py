"""MMGuard Toolkit: protect image+text data from unauthorized LVLM fine-tuning, and stress-test protections.

Registries: ``DEFENSES`` (data protections), ``COUNTERMEASURES`` (the attacker's
data-side transforms), ``SURROGATES`` (model adapters), ``METRICS``.
"""
from .attacks import COUNTERMEASURES, FineTune, Transform
from .data import DataError, VQADataset, VQASample, load_dataset, load_jsonl, load_llava_json
from .defenses import DEFENSES, Defense, Protection
from .digits import load_digits_vqa
from .metrics import METRICS, Metric
from .release import read_release, write_release
from .surrogates import SURROGATES, Surrogate, load_surrogate
from .version import __version__

__all__ = ["DEFENSES", "COUNTERMEASURES", "SURROGATES", "METRICS", "Defense", "Protection", "Transform",
           "FineTune", "Surrogate", "Metric", "VQASample", "VQADataset", "DataError", "load_dataset",
           "load_jsonl", "load_llava_json", "load_digits_vqa", "load_surrogate", "read_release",
           "write_release", "__version__"]
