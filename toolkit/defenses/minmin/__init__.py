"""The min-min engine of the optimisation-based defenses (EMN, TUE, REM, MEM, MMGuard).

- :mod:`.config`: :class:`MinMinConfig`, the loop's settings;
- :mod:`.state`: :class:`Perturbation` (the variables), :class:`MinMinRun` (the run state hooks
  receive), :func:`answer_classes`;
- :mod:`.hotflip`: :func:`trigger_pass`, the HotFlip screen-and-verify trigger search;
- :mod:`.loop`: :class:`MinMinDefense`, the bi-level loop and its hooks;
- :mod:`.fluency`: the fluency-aware trigger search's options (:class:`FluencyConfig`), rules
  (:class:`TriggerRules`) and the trigger defenses' mixin (:class:`FluentTriggers`).
"""
from .config import MinMinConfig
from .fluency import FluencyConfig, FluentTriggers, TriggerRules
from .hotflip import answer_loss, trigger_pass
from .loop import MinMinDefense
from .state import MinMinRun, Perturbation, answer_classes

__all__ = ["MinMinConfig", "MinMinDefense", "MinMinRun", "Perturbation", "answer_classes", "trigger_pass",
           "answer_loss", "FluencyConfig", "FluentTriggers", "TriggerRules"]
