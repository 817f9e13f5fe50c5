"""cli.py: commands mirror the API, and errors are one line, never a traceback."""

from __future__ import annotations

import inspect
import json

import pytest
from typer.testing import CliRunner

from slimforge import cli
from slimforge.bench.bench import BenchConfig
from slimforge.evaluation.evaluate import EvalConfig

runner = CliRunner()


@pytest.mark.parametrize(("command", "config"), [(cli.evaluate, EvalConfig),
                                                 (cli.bench, BenchConfig)])
def test_every_config_field_is_a_cli_option(command, config):
    options = set(inspect.signature(command).parameters)
    assert set(config.model_fields) <= options


def test_cli_parameter_names_match_the_api():
    from slimforge.bench.bench import benchmark
    from slimforge.evaluation.evaluate import evaluate

    assert {"data", "reference"} <= set(inspect.signature(evaluate).parameters)
    assert "anchor" in inspect.signature(benchmark).parameters
    assert {"data", "reference"} <= set(inspect.signature(cli.evaluate).parameters)
    assert "anchor" in inspect.signature(cli.bench).parameters


def test_a_user_error_is_one_line_with_a_fix():
    result = runner.invoke(cli.app, ["load", "builtin:nope"])
    assert result.exit_code == 2
    assert "error: Unknown built-in model 'builtin:nope'." in result.output
    assert "fix: use one of:" in result.output
    assert "Traceback" not in result.output


def test_bench_ends_with_one_json_line(tmp_path):
    result = runner.invoke(cli.app, ["bench", "builtin:tiny-bert", "--repeats", "3",
                                     "--batch-size", "2", "--seq-len", "8",
                                     "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["p50_ms"] > 0
    assert figures["spec"] == "builtin:tiny-bert"
    (run,) = tmp_path.iterdir()
    assert {p.name for p in run.iterdir()} == {"manifest.json", "metrics.json", "report.md"}
