"""The stage runner (``puzzlekit.pipeline``): identities chained through the manifest, skip-if-done, resume of a
killed or failed stage, "run X first", dry run, multi-process refusal; configs, presets and overrides.

The runner is exercised with three small stages of its own (they count their calls and write a file), so
each rule is checked in milliseconds; the real stages run in ``test_demo.py`` / ``test_ln_pipelines.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from puzzlekit.errors import ConfigError
from puzzlekit.pipeline.config import PRESETS, load_config
from puzzlekit.pipeline.context import Context
from puzzlekit.pipeline.runner import Runner, Stage

ROOT = Path(__file__).resolve().parents[1]


def _toy(calls: list[str], fail: set[str] | None = None) -> dict[str, Stage]:
    def make(name: str, settings):
        def run(ctx):
            calls.append(name)
            if fail and name in fail:
                raise RuntimeError(f"{name} failed")
            prev = {n: ctx.result(n)["value"] for n in ctx.cfg.stages[: ctx.cfg.stages.index(name)]}
            (ctx.out / f"{name}.txt").write_text(json.dumps(prev))
            return {"value": f"{name}:{settings(ctx.cfg)}", "read": prev}
        return Stage(name, run, settings, f"the {name} stage")

    return {"parent": make("parent", lambda c: {"seed": c.seed}),
            "tokens": make("tokens", lambda c: {"seq_len": c.data.seq_len}),
            "bld": make("bld", lambda c: {"tokens": c.bld.tokens})}


def _runner(tmp_path: Path, calls: list[str], fail=None, **over) -> Runner:
    cfg = load_config({"name": "toy", "output_dir": str(tmp_path / "run"), "stages": ["parent", "tokens", "bld"],
                       "heal": {"steps": 1}}, over)
    return Runner(Context(cfg, progress=False), _toy(calls, fail))


def test_a_rerun_skips_what_finished_and_a_changed_setting_reruns_from_its_stage(tmp_path):
    calls: list[str] = []
    res = _runner(tmp_path, calls).run()
    assert calls == ["parent", "tokens", "bld"] and not any(r["reused"] for r in res.values())
    assert res["bld"]["read"] == {"parent": "parent:{'seed': 0}", "tokens": "tokens:{'seq_len': 2048}"}
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    # each stage records its settings and the identity of the stage before it
    assert m["pipeline/tokens"]["config"]["settings"] == {"seq_len": 2048}
    assert m["pipeline/tokens"]["config"]["upstream"] == m["pipeline/parent"]["config"]["id"]
    assert m["pipeline/bld"]["config"]["upstream"] == m["pipeline/tokens"]["config"]["id"]
    calls.clear()
    res = _runner(tmp_path, calls).run()
    assert calls == [] and all(r["reused"] for r in res.values())
    calls.clear()
    res = _runner(tmp_path, calls, **{"data.seq_len": 64}).run()  # tokens' setting: tokens and bld re-run
    assert calls == ["tokens", "bld"] and res["parent"]["reused"] and not res["bld"]["reused"]
    calls.clear()
    _runner(tmp_path, calls, **{"seed": 1, "data.seq_len": 64}).run()  # upstream changed: everything after it
    assert calls == ["parent", "tokens", "bld"]


def test_a_stage_out_of_order_or_with_stale_inputs_names_the_one_to_run_first(tmp_path):
    calls: list[str] = []
    with pytest.raises(ConfigError, match=r"'tokens' reads the output of stage 'parent', which is not run .* "
                                          r"run --stage parent first"):
        _runner(tmp_path, calls).run("tokens")
    r = _runner(tmp_path, calls)
    r.run("parent")
    r.run("tokens")
    assert calls == ["parent", "tokens"]
    # parent's settings change: its recorded run no longer fits, so tokens (and bld) refuse to use it
    with pytest.raises(ConfigError, match=r"complete with other settings .* run --stage parent first"):
        _runner(tmp_path, calls, seed=3).run("tokens")
    with pytest.raises(ConfigError, match=r"stage 'fuse' is not in this pipeline"):
        _runner(tmp_path, calls).run("fuse")
    with pytest.raises(ConfigError, match=r"--stage 'blld'.*did you mean 'bld'"):
        _runner(tmp_path, calls).run("blld")


def test_a_killed_or_failed_stage_runs_again_and_later_stages_wait(tmp_path):
    from puzzlekit.rundir import State

    calls: list[str] = []
    with pytest.raises(RuntimeError):
        _runner(tmp_path, calls, fail={"tokens"}).run()
    r = _runner(tmp_path, calls)
    assert [r.state(n) for n in ("parent", "tokens", "bld")] == ["done", "failed", "pending"]
    r.ctx.rd.set_stage("pipeline/tokens", State.RUNNING, config={"id": "x"})  # as a SIGKILL leaves it
    assert r.state("tokens") == "running"
    dry = {s["stage"]: s for s in r.dry_run()}
    assert not dry["parent"]["would_run"] and dry["tokens"]["would_run"] and dry["bld"]["state"] == "pending"
    calls.clear()
    res = r.run()
    assert calls == ["tokens", "bld"] and res["parent"]["reused"]
    # a stage re-run marks the later ones pending before it starts: they cannot be taken as done meanwhile
    calls.clear()
    r2 = _runner(tmp_path, calls, fail={"tokens"}, **{"data.seq_len": 8})
    with pytest.raises(RuntimeError):
        r2.run()
    assert r2.ctx.rd.stage_info("pipeline/bld")["state"] == "PENDING"


def test_one_process_stages_refuse_torchrun(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"stage 'parent' runs as one process"):
        _runner(tmp_path, calls).run("parent")


# ---- configs
def test_every_preset_loads_and_names_its_command():
    from puzzlekit.pipeline.config import PRESET_DIR
    from puzzlekit.pipeline.stages import STAGE_ORDER

    assert {"demo", "demo-fast", "demo-tiny", "ln-super", "ln-super-tiny", "ln-ultra", "ln-ultra-tiny"} <= set(PRESETS)
    for name in PRESETS:
        cfg = load_config(name)
        assert cfg.stages[-1] == "report" and set(cfg.stages) <= set(STAGE_ORDER)
        text = (PRESET_DIR / f"{name}.yaml").read_text()
        assert f"puzzlekit run {name}" in text, name


def test_bad_configs_are_refused_with_the_key_and_a_fix(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("name: x\nstages: [parent, tokens]\nbld: {tokenz: 5}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'bld.tokenz'; did you mean 'tokens'"):
        load_config(bad)
    bad.write_text("stages: [tokens, parent]\n")
    with pytest.raises(ConfigError, match=r"in the order parent → tokens"):
        load_config(bad)
    bad.write_text("stages: [parent, teacher]\n")  # an alias of parent: twice
    with pytest.raises(ConfigError, match=r"each stage once"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"score.sequences: expected int"):
        load_config("demo-tiny", {"score.sequences": "many"})
    with pytest.raises(ConfigError, match=r"profile.profiler: measured"):
        load_config("ln-super-tiny", {"search.target_speedup": 2.0})
    with pytest.raises(ConfigError, match=r"no such preset or config file; did you mean 'demo-fast'"):
        load_config("demo-fats")
    with pytest.raises(ConfigError, match=r"override 'seed': write key=value"):
        from puzzlekit.pipeline.config import parse_overrides

        parse_overrides(["seed"])


def test_overrides_reach_nested_sections_and_aliases_resolve():
    cfg = load_config("demo-tiny", {"parent.teacher.steps": 7, "heal.steps": 3, "stages": ["teacher", "tokens"]})
    assert cfg.parent.teacher.steps == 7 and cfg.heal.steps == 3 and cfg.stages == ("parent", "tokens")
    assert cfg.parent.teacher.hidden_size == 64  # the rest of the section is the preset's
    spec = load_config("ln-super").parent_spec()
    assert spec.num_hidden_layers == 80 and spec.intermediate_size == 28672


def test_cli_run_dry_run_and_errors(tmp_path, capsys):
    from puzzlekit.cli import main

    assert main(["run", "demo-tiny", "--dry-run", "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "parent" in out and "would run" in out and "report" in out
    assert main(["run", "demo", "--fast", "--dry-run", "--json", "--out", str(tmp_path / "d")]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "demo-fast"
    assert main(["run", "ln-ultra", "--fast", "--dry-run", "--out", str(tmp_path / "d")]) == 2
    assert "no preset 'ln-ultra-fast'" in capsys.readouterr().err
    assert main(["run", "no-such-preset", "--out", str(tmp_path / "d")]) == 2
    assert "no such preset" in capsys.readouterr().err
    assert main(["run", "ln-super-tiny", "bld.tokenz=3", "--dry-run", "--out", str(tmp_path / "d")]) == 2
    assert "unknown key 'bld.tokenz'" in capsys.readouterr().err
    assert main(["run", "ln-super-tiny", "--stage", "heal", "--out", str(tmp_path / "d")]) == 2
    assert "run --stage child first" in capsys.readouterr().err
