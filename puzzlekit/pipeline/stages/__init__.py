"""The stages, in the runner's order; each one a thin call into the package that owns the work.

========== ================================================ =====================================
stage      what it does                                     library calls
========== ================================================ =====================================
parent     train a teacher, build the tiny stand-in, or     :mod:`puzzlekit.demo.teacher`,
           take a local model folder                        :mod:`puzzlekit.model`
tokens     pack the text into train / held-out rows         :func:`puzzlekit.data.build_token_data`
bld        blockwise local distillation of every candidate  :func:`puzzlekit.bld.run_bld`
score      replace-1-block metrics of every candidate       :func:`puzzlekit.scoring.score_library`
profile    costs per block: analytic roofline or measured   :mod:`puzzlekit.profilers`
search     MIP under a speed target / deployment limits     :func:`puzzlekit.search.search`
child      assemble (measured speed-matching optional)      :func:`puzzlekit.model.assemble`
fuse       FFN fusion of attention-free runs                :mod:`puzzlekit.fusion`
baselines  simple compressions at the child's measured speed :mod:`puzzlekit.baselines`
heal       GKD of the child (and the baselines)             :func:`puzzlekit.distill.distill`
evaluate   test text per domain, chat prompts, rank corr.   :mod:`puzzlekit.eval`
cpt        continued pre-training (LM loss)                 :func:`puzzlekit.distill.distill`
sft        SFT with the reasoning toggle                    :mod:`puzzlekit.post` + TRL
rl         GRPO with a pass-rate curriculum                 :mod:`puzzlekit.post` + TRL
report     report.json / report.md (+ plots)                :mod:`puzzlekit.pipeline.report`
========== ================================================ =====================================

A new stage is a :class:`~puzzlekit.pipeline.runner.Stage` added to :data:`STAGES` at its place in the
order (e.g. an engine-checked ``export`` before ``report``).  ``search`` .. ``heal`` run once per speed
target when ``search.target_speedups`` lists several (``per_target``).
"""

from __future__ import annotations

from ..config import ALIASES, STAGE_ORDER
from ..runner import Stage
from .compare import BASELINES
from .evaluate import EVALUATE
from .library import BLD, PROFILE, SCORE
from .parent import PARENT, TOKENS
from .post import RL, SFT
from .report import REPORT
from .search import CHILD, FUSE, SEARCH
from .train import CPT, HEAL

__all__ = ["STAGES", "STAGE_ORDER", "ALIASES"]

#: Every stage by name, in the order a pipeline runs them (:data:`~puzzlekit.pipeline.config.STAGE_ORDER`).
STAGES: dict[str, Stage] = {s.name: s for s in (PARENT, TOKENS, BLD, SCORE, PROFILE, SEARCH, CHILD, FUSE,
                                                 BASELINES, HEAL, EVALUATE, CPT, SFT, RL, REPORT)}
if tuple(STAGES) != STAGE_ORDER:  # pragma: no cover (a stage added here belongs in config.STAGE_ORDER too)
    raise RuntimeError(f"puzzlekit.pipeline: stages {tuple(STAGES)} differ from config.STAGE_ORDER {STAGE_ORDER}")
