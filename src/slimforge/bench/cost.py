"""What serving a model costs: measured throughput priced with the user's own price table.

Owns: `PriceTable`, `load_prices`, `Throughput`, `throughputs_of_run`, `cost_table`,
`cost_section`. Nothing
here guesses a price or a speed: throughput comes from a `bench` or `optimize` run folder
(every stage of an optimize run), prices from a YAML table the user writes:

    instances:
      c7i.large: {price_per_hour: 0.0893, replicas: 1}
      c7i.xlarge: {price_per_hour: 0.1785, replicas: 2}

`replicas` is how many replicas of the measured kind one instance runs (the throughput was
measured on one replica, with the threads that run had). For each candidate and instance:
the cost per million items (texts, or generated tokens for a causal LM) at full load, and for
a target load, the replicas and instances it needs and their price per month (730 hours).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slimforge.errors import DataError, validation_problems

HOURS_PER_MONTH = 730


class Instance(BaseModel):
    """One kind of machine: its price and how many replicas it runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    price_per_hour: float = Field(gt=0)
    replicas: int = Field(1, ge=1)


class PriceTable(BaseModel):
    """The user's prices: instance name -> `Instance`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instances: dict[str, Instance] = Field(min_length=1)


def load_prices(path: str | Path) -> PriceTable:
    """Read and check a price table; a bad one is one clear error."""
    fix = "write `instances: {NAME: {price_per_hour: 0.09, replicas: 1}}`."
    try:
        return PriceTable.model_validate(yaml.safe_load(Path(path).read_text()))
    except OSError as exc:
        raise DataError(f"Cannot read the price table {path}: {exc.strerror}.", fix) from None
    except yaml.YAMLError as exc:
        raise DataError(f"The price table {path} is not YAML: {exc}.", fix) from None
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise DataError(f"The price table {path} is not valid: {problems}.", fix) from None


@dataclass(frozen=True)
class Throughput:
    """What one replica of a candidate sustains."""

    name: str
    per_s: float
    unit: str


def throughput_of_bench(name: str, bench: dict[str, Any]) -> Throughput:
    """A candidate's throughput from its bench figures (decode tokens/s for a causal LM)."""
    if bench.get("decode_tokens_per_s"):
        return Throughput(name, bench["decode_tokens_per_s"], "generated tokens")
    return Throughput(name, bench["throughput_per_s"], bench.get("throughput_unit", "items"))


def throughputs_of_run(run_dir: str | Path) -> list[Throughput]:
    """Every measured row's throughput in an `optimize` run folder (`results.json`), or the
    model's in a `bench` run folder (`metrics.json`)."""
    folder = Path(run_dir)
    path = folder / "results.json" if (folder / "results.json").exists() \
        else folder / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"No readable results.json or metrics.json in {run_dir} ({exc}).",
                        "point at a run folder that `slimforge bench` or `optimize` wrote.") \
            from None
    if "candidates" in metrics:
        rows = [metrics["baseline"], *([metrics["peer"]] if metrics.get("peer") else []),
                *metrics["candidates"]]
        return [throughput_of_bench(r["name"], r["bench"]) for r in rows
                if r.get("status") == "measured"]
    if "throughput_per_s" in metrics:
        return [throughput_of_bench(metrics.get("spec", "model"), metrics)]
    raise DataError(f"{path} holds no throughput.",
                    "point at a run folder that `slimforge bench` or `optimize` wrote.")


@dataclass(frozen=True)
class CostRow:
    """One candidate on one instance."""

    candidate: str
    instance: str
    per_s_per_instance: float
    unit: str
    cost_per_million: float
    target_per_s: float | None
    replicas: int | None
    instances: int | None
    monthly_cost: float | None


def cost_table(throughputs: list[Throughput], prices: PriceTable,
               target_per_s: float | None = None) -> list[CostRow]:
    """Every candidate priced on every instance, cheapest per million first."""
    rows = []
    for t in throughputs:
        if t.per_s <= 0:
            continue
        for name, instance in prices.instances.items():
            per_instance = t.per_s * instance.replicas
            per_million = instance.price_per_hour / (per_instance * 3600) * 1e6
            replicas = count = monthly = None
            if target_per_s is not None:
                replicas = math.ceil(target_per_s / t.per_s)
                count = math.ceil(replicas / instance.replicas)
                monthly = count * instance.price_per_hour * HOURS_PER_MONTH
            rows.append(CostRow(t.name, name, per_instance, t.unit, per_million, target_per_s,
                                replicas, count, monthly))
    return sorted(rows, key=lambda r: r.cost_per_million)


def rows_to_json(rows: list[CostRow]) -> list[dict[str, Any]]:
    """The rows as plain dicts."""
    return [asdict(r) for r in rows]


def cost_section(rows: list[dict[str, Any]]) -> list[str]:
    """The report's Markdown lines for cost rows (as from `rows_to_json`)."""
    if not rows:
        return []
    target = rows[0]["target_per_s"]
    lines = ["## Cost", "", "From the throughput measured above and the recipe's price table"
             + (f"; replicas and monthly price for {target:g} per second." if target else "."),
             "", "| candidate | instance | per second | per million | replicas | instances "
             "| per month |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        plan = ("—", "—", "—") if r["replicas"] is None else (
            str(r["replicas"]), str(r["instances"]), f"{r['monthly_cost']:,.2f}")
        lines.append(f"| {r['candidate']} | {r['instance']} | {r['per_s_per_instance']:,.1f} "
                     f"{r['unit']} | {r['cost_per_million']:,.4f} | " + " | ".join(plan) + " |")
    return [*lines, ""]
