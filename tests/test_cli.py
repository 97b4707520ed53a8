"""The command line: `collect` from YAML end to end, and every shipped config parses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rmrouter.cli import main
from rmrouter.data.behaviour import read_behaviour

ROOT = Path(__file__).resolve().parents[1]

CHEAP_POOL = {
    "class_path": "rmrouter.reward_models.RewardModelPool",
    "init_args": {
        "reward_models": [
            {"class_path": "rmrouter.reward_models.GSM8KVerifierRewardModel", "init_args": {"name": "verifier"}},
            {"class_path": "rmrouter.reward_models.LengthRewardModel", "init_args": {"name": "length"}},
        ]
    },
}


def write_collect_config(tmp_path: Path) -> Path:
    config = {
        "pool": "pool.yaml",  # relative to this config file, as in configs/behaviour.yaml
        "data": [
            {"class_path": "rmrouter.data.GSM8KSolutionPairs", "init_args": {"limit": 6}},
            {"class_path": "rmrouter.data.HHRLHFHarmlessPairs", "init_args": {"limit": 4, "on_error": "skip"}},
        ],
        "output": str(tmp_path / "out" / "behaviour.jsonl"),
        "table": str(tmp_path / "docs" / "table.md"),
        "batch_size": 4,
    }
    (tmp_path / "pool.yaml").write_text(yaml.safe_dump(CHEAP_POOL))
    path = tmp_path / "collect.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_collect_from_yaml_writes_records_and_table_then_resumes(tmp_path, capsys):
    config = write_collect_config(tmp_path)
    main(["collect", "--config", str(config)])
    output = tmp_path / "out" / "behaviour.jsonl"
    records = read_behaviour(output, ["verifier", "length"])
    assert [r.pair.domain for r in records] == ["math"] * 6 + ["safety"] * 4
    assert all(r.agree["verifier"] for r in records[:6])  # the verifier is exact on correct-vs-incorrect pairs
    table = (tmp_path / "docs" / "table.md").read_text()
    # it cannot judge safety pairs, which have no reference: no accuracy there, and no coverage
    assert "| verifier | **100.0** | n/a | **100.0** |" in table and "| verifier | 100.0 | 0.0 | 60.0 |" in table
    assert "| RM | math | safety | overall |" in capsys.readouterr().out
    assert f"Written by `python cli.py collect --config {config}`;" in table  # the command exactly as it ran

    before = output.read_bytes()
    main(["collect", "--config", str(config)])
    assert output.read_bytes() == before


def test_collect_reports_a_bad_config_key(tmp_path):
    config = write_collect_config(tmp_path)
    with pytest.raises(SystemExit):
        main(["collect", "--config", str(config), "--batch_sise", "3"])


def test_rmrouter_console_script_is_the_same_entry_point():
    import configparser

    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    assert parser["options.entry_points"]["console_scripts"].strip() == "rmrouter = rmrouter.cli:main"
    assert "from rmrouter.cli import main" in (ROOT / "cli.py").read_text()


def test_help_lists_every_command_and_an_unknown_one_is_refused_with_the_list(capsys):
    main(["--help"])
    shown = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "collect", "table", "pipeline", "publish"):
        assert f"\n  {command} " in shown, command
    with pytest.raises(SystemExit, match="unknown command 'fitt'(.|\n)*rmrouter's jobs"):
        main(["fitt", "--config", "x.yaml"])


def test_the_pipeline_runs_commands_without_importing_the_cli():
    import ast

    tree = ast.parse((ROOT / "rmrouter" / "pipeline.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "rmrouter.commands" in imported and "rmrouter.cli" not in imported


def shell(*args: str, env: dict | None = None, cwd: Path = ROOT):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)  # fmt: skip


def test_from_the_shell_each_mistake_ends_in_one_line_with_its_exit_code(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    data = shell("table", "--behaviour", str(empty), "--output", str(tmp_path / "t.md"))
    assert data.returncode == 1 and "Traceback" not in data.stderr
    assert data.stderr.strip().splitlines()[-1].startswith(f"error: {empty}: no behaviour records (an empty file)")

    # a negative value after a space, which argparse would take for an option
    config = shell("fit", "--config", "configs/offline_router.yaml", "--model.init_args.learning_rate", "-1e-3")
    assert config.returncode == 2 and "Traceback" not in config.stderr
    assert config.stderr.strip().splitlines()[-1] == (
        "config error: model.init_args.learning_rate: Not of type NonNegativeFloat: -1e-3 does not conform to "
        "restriction v>=0 (keys come from configs/offline_router.yaml and the command line)"
    )
    model = shell("fit", "--config", "configs/learned_rm/safety.yaml", "--model.init_args.encoder", "no-such-model-xyz",
                  "--trainer.default_root_dir", str(tmp_path), env={"HF_ENDPOINT": "http://127.0.0.1:9"})  # fmt: skip
    assert model.returncode == 1 and "Traceback" not in model.stderr and "Retrying" not in model.stderr
    last = model.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not load 'no-such-model-xyz'") and "127.0.0.1:9 could not be reached" in last

    debug = shell("table", "--behaviour", str(empty), "--output", str(tmp_path / "t.md"), env={"RMROUTER_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_typo_in_a_yaml_file_is_two_lines_that_name_the_key_and_the_files(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  init_args:\n    learnng_rate: 0.1\n")
    done = shell("fit", "--config", "configs/offline_router.yaml", "--config", str(typo))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    usage, error = done.stderr.strip().splitlines()[-2:]
    assert usage.startswith("usage: python cli.py fit --config FILE.yaml")
    assert error == (
        "config error: model: Option 'learnng_rate' is not accepted by rmrouter.modules.offline_router."
        f"OfflineRouterModule (keys come from configs/offline_router.yaml, {typo} and the command line)"
    )


def test_a_typo_in_a_job_of_our_own_is_two_lines_too(tmp_path):
    done = shell("collect", "--config", "configs/behaviour.yaml", "--batch_sise", "3")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    usage, error = done.stderr.strip().splitlines()
    assert usage.startswith("usage: python cli.py collect --config FILE.yaml")
    assert error == (
        "config error: unrecognized arguments: --batch_sise 3"
        " (keys come from configs/behaviour.yaml and the command line)"
    )


def test_a_negative_number_after_a_key_is_its_value():
    from rmrouter.commands import negative_values_joined

    args = ["fit", "--lr", "-1e-4", "--beta", "-.5", "--seed", "-3", "--flag", "--name", "-x", "--lr=-1", "-2"]
    joined = ["fit", "--lr=-1e-4", "--beta=-.5", "--seed=-3", "--flag", "--name", "-x", "--lr=-1", "-2"]
    assert negative_values_joined(args) == joined


def test_jsonargparse_reports_become_one_line():
    from rmrouter.commands import config_files, short_parse_error

    wrong_type = "\n".join([
        'Parser key "trainer.max_epochs":', "  Does not validate against any of the Union subtypes",
        "  Subtypes: [<class 'int'>, <class 'NoneType'>]", "  Errors:", "    - Expected a <class 'int'>",
        "    - Expected a <class 'NoneType'>", "  Given value type: <class 'str'>", "  Given value: abc",
    ])  # fmt: skip
    assert short_parse_error(wrong_type) == "trainer.max_epochs: Expected a <class 'int'>, got abc"
    assert short_parse_error("unrecognized arguments: --trainr.max_epochs 3") == (
        "unrecognized arguments: --trainr.max_epochs 3"
    )
    assert config_files(["cli.py", "fit", "--config", "a.yaml", "--config=b.yaml", "--x", "1"]) == ["a.yaml", "b.yaml"]
