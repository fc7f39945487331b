"""Every shipped example config validates, its header names the command, and each recipe runs a tiny smoke.

The LN recipes are configs of the pipeline runner (``puzzlekit run``), equal to the presets it ships."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from puzzlekit.errors import ConfigError
from puzzlekit.post.recipe_config import load_recipe_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
RECIPES = ["gkd", "sft_reasoning_toggle", "grpo_curriculum"]
#: Recipes that are pipeline configs: example folder -> the presets its configs are.
PIPELINES = {"ln_super": {"config.yaml": "ln-super", "config_tiny.yaml": "ln-super-tiny"},
             "ln_ultra": {"config.yaml": "ln-ultra", "config_tiny.yaml": "ln-ultra-tiny"},
             "smollm2": {"config.yaml": "smollm2-135m", "config_fast.yaml": "smollm2-135m-fast"}}


def _recipe(name: str):
    path = EXAMPLES / name / "recipe.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(path.parent))
    return mod


def _config_class(name: str):
    return _recipe(name).Config


CONFIGS = [(name, p.name) for name in RECIPES for p in sorted((EXAMPLES / name).glob("config*.yaml"))]


def test_every_recipe_ships_a_config():
    assert {name for name, _ in CONFIGS} == set(RECIPES)
    folders = {p.name for p in EXAMPLES.iterdir() if p.is_dir()}
    assert folders == set(RECIPES) | set(PIPELINES) | {"library_use"} & folders


@pytest.mark.parametrize(("name", "file"), [(n, f) for n, fs in PIPELINES.items() for f in fs])
def test_pipeline_configs_are_the_presets_and_name_their_command(name, file):
    """``examples/ln_*/config*.yaml`` are the presets ``puzzlekit run`` ships (byte for byte), load and
    name their command; no example script loads another recipe (by path or through sys.path)."""
    from puzzlekit.pipeline import load_config
    from puzzlekit.pipeline.config import PRESET_DIR

    path = EXAMPLES / name / file
    preset = PIPELINES[name][file]
    assert path.read_text() == (PRESET_DIR / f"{preset}.yaml").read_text()
    assert load_config(path) == load_config(preset)
    header = [ln for ln in path.read_text().splitlines() if ln.startswith("#")]
    assert any(f"puzzlekit run {preset}" in ln for ln in header), "the config's header must give the command"
    assert (EXAMPLES / name / "README.md").exists()
    assert not (EXAMPLES / name / "recipe.py").exists()  # the stages are library code (puzzlekit.pipeline)
    for script in EXAMPLES.rglob("*.py"):
        text = script.read_text()
        assert "spec_from_file_location" not in text and "sys.path.insert" not in text, script


@pytest.mark.parametrize(("name", "file"), CONFIGS)
def test_every_config_validates_and_names_its_command(name, file):
    cfg_path = EXAMPLES / name / file
    cfg = load_recipe_config(cfg_path, _config_class(name))
    assert cfg is not None
    header = [ln for ln in cfg_path.read_text().splitlines() if ln.startswith("#")]
    assert any(f"examples/{name}/recipe.py" in ln for ln in header), "the config's header must give the command"
    assert (EXAMPLES / name / "README.md").exists()


def test_unknown_and_mistyped_keys_are_refused(tmp_path):
    cls = _config_class("sft_reasoning_toggle")
    bad = tmp_path / "c.yaml"
    bad.write_text("batch_sise: 3\n")
    with pytest.raises(ConfigError, match="batch_size"):
        load_recipe_config(bad, cls)
    bad.write_text("batch_size: many\n")
    with pytest.raises(ConfigError, match="batch_size"):
        load_recipe_config(bad, cls)


def test_accelerate_configs_parse():
    import yaml

    for f in ("accelerate_ddp.yaml", "accelerate_fsdp.yaml"):
        d = yaml.safe_load((EXAMPLES / "gkd" / f).read_text())
        assert d["distributed_type"] in ("MULTI_CPU", "MULTI_GPU", "FSDP") and d["num_processes"] >= 2


# ------------------------------------------------------------------ tiny smokes of each recipe
@pytest.fixture(scope="module")
def sft_smoke(tmp_path_factory):
    import torch

    torch.set_num_threads(2)
    mod = _recipe("sft_reasoning_toggle")
    out = tmp_path_factory.mktemp("sft")
    cfg = load_recipe_config(EXAMPLES / "sft_reasoning_toggle" / "config.yaml", mod.Config, {
        "output_dir": str(out), "num_train_problems": 64, "num_test_problems": 8, "hidden_size": 32,
        "num_layers": 1, "intermediate_size": 64, "reasoning_stage_samples": 32,
        "non_reasoning_stage_samples": 32, "batch_size": 16, "eval_max_new_tokens": 12})
    return mod.main(cfg), out


def test_sft_recipe_smoke(sft_smoke):
    m, out = sft_smoke
    assert [s["stage"] for s in m["stages"]] == ["reasoning", "non_reasoning"]
    assert all(s["steps"] == 2 for s in m["stages"])
    assert set(m["after"]) == {"on", "off"}
    assert (out / "model" / "model.safetensors").exists() and (out / "metrics.json").exists()


def test_grpo_recipe_smoke(sft_smoke, tmp_path):
    _, sft_out = sft_smoke
    mod = _recipe("grpo_curriculum")
    cfg = load_recipe_config(EXAMPLES / "grpo_curriculum" / "config.yaml", mod.Config, {
        "sft_model_dir": str(sft_out / "model"), "output_dir": str(tmp_path), "num_prompts": 8,
        "num_eval_problems": 4, "pass_rate_samples": 2, "max_steps": 1, "prompts_per_step": 2,
        "num_generations": 2, "max_completion_length": 8, "eval_every": 1, "eval_samples": 1,
        "orderings": ["curriculum", "random"], "train_seeds": [0], "min_pass_rate": 0.0, "max_pass_rate": 1.0})
    m = mod.main(cfg)
    assert [(r["ordering"], r["seed"]) for r in m["runs"]] == [("curriculum", 0), ("random", 0)]
    for run in m["runs"]:
        assert len(run["train_reward"]) == len(run["batch_pass_rate"]) == 1 and run["eval_curve"][-1]["step"] == 1
        assert 0.0 <= run["pool_pass_rate"] <= 1.0
    assert m["kept"] <= m["num_prompts"] == 8
    assert 0.0 <= m["before"]["pool_pass_rate"] <= 1.0 and "mean" in mod.summary(m)


def test_gkd_recipe_smoke(tmp_path):
    import torch

    torch.set_num_threads(2)
    mod = _recipe("gkd")
    cfg = load_recipe_config(EXAMPLES / "gkd" / "config.yaml", mod.Config, {
        "output_dir": str(tmp_path / "gkd"), "teacher_dir": str(tmp_path / "teacher"), "seq_len": 32,
        "max_tokens": 20000, "gkd_steps": 3, "eval_every": 3, "save_every": 3, "cpt_steps": 1, "eval_rows": 4,
        "calib_rows": 2, "batch_size": 2})
    # the tiny teacher preset trains in seconds; shrink it further for the smoke
    from puzzlekit.demo import teacher

    small = teacher.TEACHER_PRESETS["tiny"].__class__(**{**teacher.TEACHER_PRESETS["tiny"].to_dict(), "steps": 5,
                                                         "max_text_chars": 60_000})
    old = teacher.TEACHER_PRESETS["tiny"]
    teacher.TEACHER_PRESETS["tiny"] = small
    try:
        m = mod.main(cfg)
    finally:
        teacher.TEACHER_PRESETS["tiny"] = old
    assert [e["step"] for e in m["gkd_evals"]] == [0, 3]
    assert m["params_ratio"] < 1.0
    assert (tmp_path / "gkd" / "child" / "config.json").exists()


@pytest.mark.parametrize("name", ["ln_super", "ln_ultra"])
def test_ln_pipeline_dry_run(name, tmp_path):
    from puzzlekit import pipeline

    # a 6-layer stand-in parent keeps the smoke fast; the shipped configs run as they are with --dry-run
    over = {"output_dir": str(tmp_path), "search.library": None, "num_gpus": 1, "search.kv_tokens": 1000,
            "search.memory_gib": 1,
            "parent.config": {"hidden_size": 256, "intermediate_size": 768, "num_attention_heads": 8,
                              "num_key_value_heads": 4, "num_hidden_layers": 6, "vocab_size": 1000,
                              "max_position_embeddings": 2048}}
    r = pipeline.dry_run(EXAMPLES / name / "config.yaml", overrides=over)["plan"]
    assert r["dry_run"] and r["library"] == "synthetic"
    assert r["child"]["params"] <= r["parent"]["params"]
    assert (tmp_path / "plan.json").exists() and (tmp_path / "child_config.json").exists()
    if name == "ln_ultra":
        assert r["fusion"] is not None and r["would_train"]["rl"] and r["would_train"]["cpt"]
        assert r["child"]["analytic_speedup"] >= 1.0
    # a real stage run before its inputs exist says which stage comes first
    with pytest.raises(ConfigError, match="first"):
        pipeline.run(EXAMPLES / name / "config.yaml", "heal", overrides=over, progress=False)


def test_recipe_command_line_reads_overrides_and_exits_2_on_a_bad_key(tmp_path, capsys):
    from puzzlekit.post.recipe_config import recipe_config_from_argv

    cls = _config_class("sft_reasoning_toggle")
    script = EXAMPLES / "sft_reasoning_toggle" / "recipe.py"
    cfg = recipe_config_from_argv(script, "doc line\nmore", cls, ["batch_size=3"])
    assert cfg.batch_size == 3
    with pytest.raises(SystemExit) as e:
        recipe_config_from_argv(script, None, cls, ["batch_sise=3"])
    assert e.value.code == 2 and "batch_size" in capsys.readouterr().err
