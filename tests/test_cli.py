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
