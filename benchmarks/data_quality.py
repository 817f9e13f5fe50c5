"""Data quality at scale: `slimforge data check` and `data clean` on 1,000,000 planted rows.

Builds a JSONL file from the stdlib docstring corpus (no network): every ordinary row is 3
sentences drawn at random from the corpus's sentences, and into the stream it plants, at
known lines,

- exact duplicates (an earlier ordinary row re-cased with its spaces doubled: the same after
  normalisation),
- near-duplicates (an earlier ordinary row with 1-2 characters replaced, inserted or
  deleted),
- empty texts, malformed lines (broken JSON, a JSON list, a blank line) and
- sensitive strings (an e-mail address, a phone number, a Luhn-valid card number, an
  IPv4 address or an API-key-like token inside an ordinary row).

Then it runs the real commands as a user would, each in its own process whose peak RSS is
read from the kernel (`wait4`): `data check --show ROWS` (every finding
listed, so every planted line can be looked up) and `data clean`. It scores near-duplicates
at the pair level: a found pair is right when it was planted or when the two texts are in
fact at least `threshold` similar (exact Jaccard of character 5-grams; random sentence
draws make a few such pairs by chance), and recall is the share of planted pairs found in
one cluster. It checks that every planted malformed line is reported with its line number,
and that `kept + rejected = input`.

Ends stdout with one JSON object (the interface the acceptance checks read).

    .venv/bin/python benchmarks/data_quality.py            # 1,000,000 rows
    .venv/bin/python benchmarks/data_quality.py --rows 50000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARES = {"exact": 0.03, "near": 0.03, "empty": 0.005, "malformed": 0.005, "sensitive": 0.01}
"""Share of rows of each planted kind; the rest are ordinary rows."""
SENSITIVE = ("write to {} now", "call +1 415 555 {:04d} today", "card 4111 1111 1111 1111",
             "from host 10.{}.2.3", "key sk-{}abcdefghijklmnop")


def sentences() -> list[str]:
    """Distinct sentences of 40-200 characters from the stdlib docstring corpus."""
    from slimforge.data.sources import load_texts

    found = {s.strip() for p in load_texts("builtin:stdlib-docs", "all")
             for s in re.split(r"(?<=[.!?])\s+", p)}
    return sorted(s for s in found if 40 <= len(s) <= 200)


def _edit(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 2)):
        at = rng.randrange(1, len(text) - 1)
        kind = rng.randrange(3)
        char = rng.choice("qxzjk#")
        text = (text[:at] + char + text[at + 1:] if kind == 0 else
                text[:at] + char + text[at:] if kind == 1 else text[:at] + text[at + 1:])
    return text


def generate(path: Path, rows: int, seed: int = 0) -> dict:
    """Write the planted file; returns what was planted where."""
    rng, pool = random.Random(seed), sentences()
    ordinary: list[int] = []  # lines of ordinary rows, originals for the copies
    texts: dict[int, str] = {}
    planted: dict[str, list] = {kind: [] for kind in SHARES}
    kinds, weights = [*SHARES, "ordinary"], [*SHARES.values(), 1 - sum(SHARES.values())]
    with open(path, "w", encoding="utf-8") as out:
        for line in range(1, rows + 1):
            kind = rng.choices(kinds, weights)[0] if len(ordinary) > 100 else "ordinary"
            if kind == "malformed":
                out.write(rng.choice(['{"text": "cut short', "[1, 2, 3]", ""]) + "\n")
                planted["malformed"].append(line)
                continue
            if kind in ("exact", "near"):
                source = rng.choice(ordinary)
                original = texts[source]
                text = (original.upper().replace(" ", "  ") if kind == "exact"
                        else _edit(original, rng))
                planted[kind].append((source, line))
            elif kind == "empty":
                text = rng.choice(["", "   ", "\t"])
                planted["empty"].append(line)
            else:
                text = " ".join(rng.sample(pool, 3))
                if kind == "sensitive":
                    pattern = rng.choice(SENSITIVE)
                    secret = pattern.format(f"user{line}@example.com" if "write" in pattern
                                            else line % 10_000 if "call" in pattern
                                            else line % 250 if "host" in pattern else line)
                    text = f"{text} Please {secret}."
                    planted["sensitive"].append(line)
                else:
                    ordinary.append(line)
                    texts[line] = text
            out.write(json.dumps({"text": text}) + "\n")
    return {"planted": planted, "texts": texts}


def run(*argv: str, cwd: Path) -> tuple[dict, float, float]:
    """Run a slimforge command; (its last JSON line, seconds, peak RSS MB of that process,
    as the kernel counted it: `wait4`'s resource usage of that one child)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "slimforge", *argv], cwd=cwd,
                                 stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"slimforge {' '.join(argv)} failed:\n{err.read()[-2000:]}")
        last = out.read().strip().splitlines()[-1]
    return json.loads(last), seconds, usage.ru_maxrss / 1024


def _shingles(text: str) -> set[str]:
    normal = re.sub(r"\s+", " ", text.casefold()).strip()
    return {normal[i:i + 5] for i in range(max(len(normal) - 4, 1))}


def score_near(clusters: list[list[int]], pairs: list[tuple[int, int]], path: Path,
               threshold: float) -> tuple[float, float, int]:
    """(precision, recall, pairs found): see the module's docstring."""
    cluster_of = {line: i for i, cluster in enumerate(clusters) for line in cluster}
    found = {(c[0], line) for c in clusters for line in c[1:]}  # each line vs its first
    planted = set(pairs)
    recall = sum(cluster_of.get(a, -1) == cluster_of.get(b, -2) for a, b in pairs) / len(pairs)
    unplanted = {p for p in found if p not in planted}
    wanted = {line for pair in unplanted for line in pair}
    texts = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if number in wanted:
                texts[number] = json.loads(line)["text"]
    right = len(found) - len(unplanted)
    for a, b in unplanted:  # found, not planted: right if the texts are in fact that near
        x, y = _shingles(texts[a]), _shingles(texts[b])
        right += len(x & y) / len(x | y) >= threshold
    return right / max(len(found), 1), recall, len(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--keep", help="folder to keep the files in (default: a temp folder)")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="slimforge-dq-"))
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "planted.jsonl"
    started = time.perf_counter()
    truth = generate(data, args.rows)
    planted = truth["planted"]
    print(f"generated {args.rows:,} rows ({data.stat().st_size / 1e6:.0f} MB) in "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    check, check_s, check_rss = run("data", "check", str(data), "--show", str(args.rows),
                                    "--near-dup-threshold", str(args.threshold),
                                    "--output-dir", str(folder / "runs"), cwd=folder)
    print(f"check: {check_s:.0f} s, peak RSS {check_rss:.0f} MB", file=sys.stderr)
    clean, clean_s, clean_rss = run("data", "clean", str(data), "-o", str(folder / "clean.jsonl"),
                                    "--near-dup-threshold", str(args.threshold), cwd=folder)
    print(f"clean: {clean_s:.0f} s, peak RSS {clean_rss:.0f} MB", file=sys.stderr)
    clusters = json.loads((Path(check["run"]) / "metrics.json").read_text())[
        "near_duplicate_clusters"]
    precision, recall, found = score_near(clusters, planted["near"], data, args.threshold)
    reported = {e["line"] for e in check["examples"].get("malformed", [])}
    with open(folder / "clean.jsonl", encoding="utf-8") as handle:
        cleaned_lines = sum(1 for _ in handle)
    result = {
        "rows": args.rows,
        "rows_per_s": round(2 * args.rows / (check_s + clean_s)),
        "check_rows_per_s": round(args.rows / check_s),
        "clean_rows_per_s": round(args.rows / clean_s),
        "check_s": round(check_s, 1), "clean_s": round(clean_s, 1),
        "peak_rss_mb": round(max(check_rss, clean_rss)),
        "check_peak_rss_mb": round(check_rss), "clean_peak_rss_mb": round(clean_rss),
        "near_dup_precision": round(precision, 4), "near_dup_recall": round(recall, 4),
        "near_dup_pairs_found": found, "near_dup_planted": len(planted["near"]),
        "exact_dup_planted": len(planted["exact"]),
        "exact_dup_reported": check["counts"].get("exact_duplicate", 0),
        "empty_planted": len(planted["empty"]), "empty_reported": check["counts"].get("empty", 0),
        "sensitive_planted": len(planted["sensitive"]),
        "sensitive_planted_found": len(set(planted["sensitive"]) & {
            e["line"] for k, shown in check["examples"].items() if k.startswith("sensitive_")
            for e in shown}),
        "sensitive_reported": sum(v for k, v in check["counts"].items()
                                  if k.startswith("sensitive_")),
        "malformed_planted": len(planted["malformed"]),
        "malformed_reported": len(reported & set(planted["malformed"])),
        "malformed_reported_elsewhere": len(reported - set(planted["malformed"])),
        "input": clean["input"], "kept": clean["kept"], "rejected": clean["rejected"],
        "kept_plus_rejected_is_input": clean["kept"] + clean["rejected"] == clean["input"]
        == args.rows and cleaned_lines == clean["kept"],
        "reasons": clean["reasons"],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
