"""bench/cost.py: prices times measured throughput, and clear errors for bad tables."""

from __future__ import annotations

import json

import pytest

from slimforge.bench.cost import (
    PriceTable,
    Throughput,
    cost_table,
    load_prices,
    throughputs_of_run,
)
from slimforge.errors import DataError


def test_cost_per_million_and_replicas_for_a_target_load():
    prices = PriceTable.model_validate({"instances": {
        "small": {"price_per_hour": 0.36}, "big": {"price_per_hour": 1.08, "replicas": 4}}})
    rows = cost_table([Throughput("int8", 100.0, "texts"), Throughput("fp32", 25.0, "texts")],
                      prices, target_per_s=250)
    best = rows[0]
    assert (best.candidate, best.instance) == ("int8", "big")  # 400/s for 1.08/h
    assert best.cost_per_million == pytest.approx(1.08 / (400 * 3600) * 1e6)
    assert (best.replicas, best.instances) == (3, 1)
    assert best.monthly_cost == pytest.approx(1.08 * 730)
    small_fp32 = next(r for r in rows if (r.candidate, r.instance) == ("fp32", "small"))
    assert small_fp32.cost_per_million == pytest.approx(4.0)  # 0.36 / 90,000 per hour * 1e6
    assert (small_fp32.replicas, small_fp32.instances) == (10, 10)


def test_throughputs_come_from_every_measured_optimize_row(tmp_path):
    rows = [{"name": "baseline", "status": "measured",
             "bench": {"throughput_per_s": 70.0, "throughput_unit": "texts/s"}},
            {"name": "int8", "status": "measured",
             "bench": {"throughput_per_s": 280.0, "throughput_unit": "texts/s"}},
            {"name": "late", "status": "skipped"},
            {"name": "lm", "status": "measured",
             "bench": {"throughput_per_s": 3.0, "decode_tokens_per_s": 30.0}}]
    (tmp_path / "results.json").write_text(json.dumps(
        {"baseline": rows[0], "peer": None, "candidates": rows[1:]}))
    found = throughputs_of_run(tmp_path)
    assert [(t.name, t.per_s) for t in found] == [("baseline", 70.0), ("int8", 280.0),
                                                  ("lm", 30.0)]
    assert found[2].unit == "generated tokens"


@pytest.mark.parametrize(("text", "problem"), [
    ("instances: {}", "instances"),
    ("instances: {a: {price_per_hour: -1}}", "price_per_hour"),
    ("instances: {a: {price_per_hour: 1, gpus: 2}}", "gpus"),
    ("instances: [", "not YAML"),
])
def test_a_bad_price_table_is_one_clear_error(tmp_path, text, problem):
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(DataError, match=problem):
        load_prices(path)


def test_a_folder_without_metrics_is_refused(tmp_path):
    with pytest.raises(DataError, match="metrics.json"):
        throughputs_of_run(tmp_path)
