"""optimize end to end on a tiny model: resume after an interruption, the time budget, early
stopping of a failed branch, and report.html opened in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from slimforge import pipeline
from slimforge.errors import SlimforgeError
from slimforge.recipe import parse_recipe

CHROMIUM = shutil.which("chromium")
QUICK = {"model": "builtin:tiny-bert", "peer": "none",
         "eval": {"limit": 16, "max_length": 32},
         "bench": {"repeats": 2, "batch_size": 2, "seq_len": 16, "warmup": 1, "threads": 1},
         "budget": {"min_cosine": 0.5, "resamples": 200}}
SEARCH = [{"axis": "prune", "options": ["none", {"name": "p50", "steps": [
              {"step": "prune_structured", "ffn": 0.5, "heads": 0.5}]}]},
          {"axis": "quantize", "options": ["none", {"name": "int8", "steps": [
              {"step": "quantize"}]}, {"name": "w8", "steps": [
              {"step": "quantize", "method": "weight-only-int8"}]}]}]


class SearchInterruptedError(Exception):
    """Stands for whatever stops a search midway: Ctrl-C, a killed job, a crash."""


def _recipe(**changes):
    return parse_recipe({**QUICK, "search": SEARCH, **changes})


def test_an_interrupted_search_resumes_where_it_stopped(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real, measured, stop_at = pipeline.benchmark, [], [3]

    def fails_on_the_third(loaded, *args, **kwargs):
        measured.append(loaded.steps)
        if len(measured) in stop_at:
            raise SearchInterruptedError
        return real(loaded, *args, **kwargs)

    monkeypatch.setattr(pipeline, "benchmark", fails_on_the_third)
    with pytest.raises(SearchInterruptedError):
        pipeline.optimize(_recipe(), out=out)
    assert not out.exists()  # no half-written run folder
    journal = sorted((tmp_path / "run.partial").glob("item-*.json"))
    first = [json.loads(p.read_text()) for p in journal]
    assert [row["name"] for row in first] == ["int8", "w8"]

    measured.clear()
    stop_at.clear()
    result = pipeline.optimize(_recipe(), out=out)
    assert len(measured) == 3  # p50, p50+int8, p50+w8: nothing measured twice
    rows = {row["name"]: row for row in result.results["candidates"]}
    assert list(rows) == ["int8", "w8", "p50", "p50+int8", "p50+w8"]
    for before in first:
        assert rows[before["name"]]["throughput_per_s"] == before["throughput_per_s"]
    assert not (tmp_path / "run.partial").exists()
    with pytest.raises(SlimforgeError, match="already holds a finished run"):
        pipeline.optimize(_recipe(), out=out)


def test_a_journal_of_another_recipe_is_refused(tmp_path):
    (tmp_path / "run.partial").mkdir()
    (tmp_path / "run.partial" / "config.json").write_text(json.dumps({"model": "other"}))
    with pytest.raises(SlimforgeError, match="different configuration"):
        pipeline.optimize(_recipe(), out=tmp_path / "run")


def test_the_time_budget_skips_what_was_not_started(tmp_path):
    recipe = _recipe(budget={**QUICK["budget"], "time_minutes": 1e-6})
    result = pipeline.optimize(recipe, out=tmp_path / "run")
    rows = result.results["candidates"]
    assert all(r["status"] == "skipped" and "time budget" in r["reason"] for r in rows)
    assert result.selected == "baseline"
    assert "returned unchanged" in result.reason
    assert "time budget" in result.report_path.read_text()


def test_a_branch_that_already_fails_stops_early(tmp_path):
    """With a floor no compressed model can reach, the pruned model fails across its whole
    interval, so quantizing it is never tried; the report says why."""
    recipe = _recipe(budget={**QUICK["budget"], "min_cosine": 1.0})
    result = pipeline.optimize(recipe, out=tmp_path / "run")
    rows = {r["name"]: r for r in result.results["candidates"]}
    assert rows["p50"]["status"] == "measured"
    assert rows["p50"]["quality"]["cosine_mean"]["high"] < 1.0
    for name in ("p50+int8", "p50+w8"):
        assert rows[name]["status"] == "skipped"
        assert rows[name]["reason"].startswith("skipped: p50 already fails the budget")
    assert result.selected == "baseline"
    assert any(text.startswith("int8: would pass with budget.min_cosine")
               for text in result.results["relax"])


def _chromium(page: Path, shot: Path, profile: Path) -> str:
    """Open a page headless, screenshot it, and return Chromium's log (console included)."""
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--window-size=1200,5000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert shot.exists(), done.stderr[-2000:]
    return done.stderr


def _plot_pixels(shot: Path) -> int:
    """Pixels in the colours of the charts' markers and lines (text and tables are grey)."""
    from PIL import Image

    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    spread = rgb.max(-1) - rgb.min(-1)
    return int((spread > 60).sum())


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it "
                    "with apt-get when it can)")
def test_report_html_renders_its_plots_in_chromium_with_no_console_errors(tmp_path):
    result = pipeline.optimize(_recipe(search=SEARCH[1:]), out=tmp_path / "run")
    page = result.run_dir / "report.html"
    text = page.read_text()
    assert text.count("data:image/png;base64,") >= 3  # self-contained: the charts are inside
    assert "<script" not in text
    log = _chromium(page, tmp_path / "report.png", tmp_path / "profile")
    assert ":CONSOLE" not in log, log
    coloured = _plot_pixels(tmp_path / "report.png")
    # the same page without its images: the colour came from the rendered charts
    bare = tmp_path / "bare.html"
    bare.write_text(text.replace("data:image/png;base64,", "data:image/png;base64,x"))
    _chromium(bare, tmp_path / "bare.png", tmp_path / "profile2")
    assert coloured > 2000
    assert _plot_pixels(tmp_path / "bare.png") < coloured / 20
    # and the console check itself catches an error when there is one
    noisy = tmp_path / "noisy.html"
    noisy.write_text("<html><body><script>console.error('broken')</script></body></html>")
    assert ":CONSOLE" in _chromium(noisy, tmp_path / "noisy.png", tmp_path / "profile3")


def test_a_classifier_search_reports_fairness_against_the_baseline(tmp_path):
    from slimforge.data.sources import load_texts
    from tests.integration.classifier import text_classifier

    records = [{"text": text, "label": i % 2, "group": "minority" if i % 4 == 0 else "majority"}
               for i, text in enumerate(load_texts("builtin:stdlib-docs", "eval", limit=80))]
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    recipe = parse_recipe({
        "model": str(text_classifier(tmp_path / "clf")), "data": str(data), "peer": "none",
        "eval": {"limit": 80, "max_length": 32, "group_field": "group"},
        "bench": {"repeats": 2, "batch_size": 2, "seq_len": 16, "warmup": 1, "threads": 1},
        "budget": {"max_accuracy_drop": 1.0, "resamples": 200, "min_gain": 0.0},
        "search": [{"axis": "quantize", "options": ["none", {"name": "int8", "steps": [
            {"step": "quantize"}]}]}]})
    result = pipeline.optimize(recipe, out=tmp_path / "run")
    row = result.results["candidates"][0]
    assert set(row["eval"]["fairness"]["groups"]) == {"minority", "majority"}
    assert "minority" in row["eval"]["fairness_deltas"]["groups"]
    report = (tmp_path / "run" / "report.md").read_text()
    section = report.split("## Fairness across groups")[1].split("\n## ")[0]
    assert "| int8 |" in section
    assert "| baseline |" in section
