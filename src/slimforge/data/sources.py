"""Text and records from a data spec, read streaming, with clear errors.

Owns: `builtin:stdlib-docs` (English paragraphs from the Python standard library's
docstrings, built at run time with no network), `builtin:digits` (scikit-learn's bundled
handwritten digits: 1,797 labelled 8x8 images, scaled to [0, 1], split 80/20 by a seeded
stratified draw), and local `.jsonl`, `.csv`, `.parquet` and
`.txt` files. The corpus is built in a clean interpreter (`python -I`), because what a process
has imported changes which docstrings exist: first a fixed list of common modules, then every
other public standard-library module and submodule in name order (the same text on every
build of one Python version, 45% more paragraphs on 3.11); its sha256 is recorded so two runs
can prove they saw the same text. The fixed list comes first so that the paragraphs it gave
stay at the head of the corpus and the first paragraphs of each split stay as they were.
Paragraphs go to the `train` (calibration) or `eval` (held-out) split by a hash of their text,
so the splits never overlap and do not shift when the corpus grows. Local files are taken
whole: the file is the split.

    >>> paragraphs = load_texts("builtin:stdlib-docs", split="eval", limit=3)
    >>> len(paragraphs)
    3
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from slimforge.data.rows import read_rows
from slimforge.errors import DataError

Split = Literal["train", "eval", "all"]
STDLIB_DOCS = "builtin:stdlib-docs"
DIGITS = "builtin:digits"
EVAL_PERCENT = 20  # share of paragraphs held out for evaluation

# First a fixed list, then the rest of the standard library (`sys.stdlib_module_names` and
# their public submodules), so the corpus does not depend on what the caller imported. Modules
# missing from a Python build are skipped (the corpus hash records the difference).
STDLIB_MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "binascii", "bisect",
    "builtins", "calendar", "cmath", "cmd", "codecs", "collections", "colorsys",
    "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "dbm", "decimal", "difflib", "dis", "doctest", "email", "email.message",
    "enum", "filecmp", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext",
    "glob", "gzip", "hashlib", "heapq", "hmac", "html", "html.parser", "http.client",
    "http.cookiejar", "http.server", "imaplib", "inspect", "io", "ipaddress", "itertools",
    "json", "logging", "logging.handlers", "lzma", "mailbox", "math", "mimetypes",
    "multiprocessing", "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle",
    "pkgutil", "platform", "plistlib", "poplib", "pprint", "profile", "pstats", "queue",
    "quopri", "random", "re", "reprlib", "sched", "secrets", "select", "selectors",
    "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver", "sqlite3", "ssl",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "time", "timeit", "tokenize", "trace", "traceback", "turtle", "typing",
    "unittest", "unittest.mock", "urllib.parse", "urllib.request", "uuid", "warnings",
    "wave", "weakref", "webbrowser", "xml.dom.minidom", "xml.etree.ElementTree", "xml.sax",
    "zipfile", "zipimport",
)

# Not imported: side effects (a browser, the Zen on stdout, a GUI), installs that not every
# Python has (the test suite), or no docstrings (data tables).
STDLIB_SKIPPED = (
    "antigravity", "this", "idlelib", "turtledemo", "tkinter", "test", "ensurepip", "venv",
    "lib2to3", "pydoc_data", "encodings",
)

_BUILD_SCRIPT = r"""
import importlib, inspect, json, pkgutil, re, sys, warnings
warnings.simplefilter("ignore")  # deprecated modules warn on import
def everything(fixed, skipped):
    yield from fixed
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in skipped:
            continue
        if top not in fixed:
            yield top
        try:
            path = importlib.import_module(top).__path__
        except Exception:  # missing here, or a plain module
            continue
        for info in pkgutil.walk_packages(path, top + ".", onerror=lambda name: None):
            parts = info.name.split(".")
            left_out = any(p.startswith("_") or p in ("test", "tests") for p in parts)
            if not left_out and info.name not in fixed:
                yield info.name  # "_" leaves out __main__, which runs on import
def docs(mod):
    yield inspect.getdoc(mod) or ""
    for name, obj in sorted(vars(mod).items()):
        home = getattr(obj, "__module__", None) or ""
        inside = home == mod.__name__ or home.startswith(mod.__name__ + ".")
        if name.startswith("_") or not inside:
            continue
        yield inspect.getdoc(obj) or ""
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_") and callable(member):
                    yield inspect.getdoc(member) or ""
def keep(p):
    words = p.split()
    letters = sum(c.isalpha() for c in p)
    return (12 <= len(words) <= 200 and letters >= 0.75 * len(p.replace(" ", ""))
            and ">>>" not in p and not p.rstrip().endswith(":") and p[0].isupper())
seen, out, used = set(), [], []
for modname in everything(json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))):
    try:
        mod = importlib.import_module(modname)
    except Exception:
        continue
    used.append(modname)
    for doc in docs(mod):
        for block in re.split(r"\n\s*\n", doc):
            p = " ".join(block.split())
            if p and keep(p) and p not in seen:
                seen.add(p)
                out.append(p)
json.dump({"paragraphs": out, "modules": used}, sys.stdout)
"""


@dataclass(frozen=True)
class Corpus:
    """The stdlib docstring corpus: paragraphs in a fixed order, and their provenance."""

    paragraphs: tuple[str, ...]
    modules: tuple[str, ...]
    sha256: str
    python: str

    def split(self, which: Split) -> list[str]:
        """The paragraphs of one split; `train` and `eval` never share a paragraph."""
        if which == "all":
            return list(self.paragraphs)
        held_out = [p for p in self.paragraphs if _bucket(p) < EVAL_PERCENT]
        if which == "eval":
            return held_out
        kept = set(held_out)
        return [p for p in self.paragraphs if p not in kept]


def _bucket(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 100


@functools.lru_cache(maxsize=1)
def stdlib_corpus() -> Corpus:
    """Build (once per process) the stdlib docstring corpus in a clean interpreter."""
    result = subprocess.run(
        [sys.executable, "-I", "-c", _BUILD_SCRIPT, json.dumps(STDLIB_MODULES),
         json.dumps(STDLIB_SKIPPED)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    if result.returncode != 0:
        raise DataError(
            f"Building {STDLIB_DOCS} failed: {result.stderr.strip()[-300:]}",
            "check that this Python's standard library is complete.",
        )
    built = json.loads(result.stdout)
    paragraphs = tuple(built["paragraphs"])
    digest = hashlib.sha256("\n\n".join(paragraphs).encode()).hexdigest()
    version = ".".join(map(str, sys.version_info[:3]))
    return Corpus(paragraphs, tuple(built["modules"]), digest, version)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype("float32")
    train_ids, eval_ids = train_test_split(range(len(images)), test_size=0.2, random_state=0,
                                           stratify=bunch.target)

    def records(ids: list[int]) -> list[dict[str, Any]]:
        return [{"features": images[i][None].tolist(), "label": int(bunch.target[i])}
                for i in ids]

    return records(train_ids), records(eval_ids)


def digits_records(split: Split = "eval") -> list[dict[str, Any]]:
    """`builtin:digits`: records `{"features": 1x8x8 pixels in [0, 1], "label": 0..9}`;
    `train` holds 1,437 images, `eval` 360, `all` both."""
    train, held_out = _digits()
    return {"train": train, "eval": held_out, "all": train + held_out}[split]


def describe(spec: str) -> dict[str, Any]:
    """Provenance of a data spec for manifests: the corpus hash, or the file's path and size."""
    if spec == STDLIB_DOCS:
        corpus = stdlib_corpus()
        return {"spec": spec, "sha256": corpus.sha256, "python": corpus.python,
                "paragraphs": len(corpus.paragraphs)}
    if spec == DIGITS:
        return {"spec": spec, "source": "sklearn.datasets.load_digits", "images": 1797,
                "split": "80/20 stratified, random_state=0"}
    path = Path(spec)
    return {"spec": spec, "bytes": path.stat().st_size if path.is_file() else None}


def iter_records(spec: str) -> Iterator[dict[str, Any]]:
    """Stream the records of a local file (one dict per line / row); see `load_texts`.
    Blank lines are skipped; any other malformed row is an error naming its line."""
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.",
                        f"check the path, or use {STDLIB_DOCS} for the built-in corpus.")
    for line, value, problem in read_rows(path):
        if problem == "blank line" or (path.suffix.lower() == ".txt" and not value["text"].strip()):
            continue
        if problem:
            raise DataError(f"{path}:{line} is malformed ({problem}).",
                            f"fix that line; `slimforge data check {path}` lists them all.")
        yield value


def load_records(spec: str, limit: int | None = None, split: Split = "eval"
                 ) -> list[dict[str, Any]]:
    """Up to `limit` records of a local file, read streaming, or of `builtin:digits` (its
    `split`; local files are taken whole).

    Raises:
        DataError: the file is missing, malformed or empty.
    """
    records: list[dict[str, Any]] = []
    if limit is not None and limit <= 0:
        return records
    if spec == DIGITS:
        return digits_records(split)[:limit]
    for record in iter_records(spec):
        records.append(record)
        if len(records) == limit:
            break  # stop reading: the rest of the file is never parsed
    if not records:
        raise DataError(f"{spec} holds no records.", "point at a file with at least one row.")
    return records


def load_texts(
    spec: str, split: Split = "eval", limit: int | None = None, text_field: str = "text"
) -> list[str]:
    """Up to `limit` texts from a data spec.

    Args:
        spec: `builtin:stdlib-docs`, or a `.jsonl` / `.csv` / `.parquet` / `.txt` file.
        split: for the built-in corpus, `train` (calibration), `eval` (held out) or `all`.
            Local files are taken whole.
        limit: the most texts to return (files stop reading there).
        text_field: the column or key holding the text (`.txt` files: each line).

    Raises:
        DataError: missing or malformed data, a missing field, or no text at all.
    """
    if spec == STDLIB_DOCS:
        texts = stdlib_corpus().split(split)[:limit]
    else:
        texts = []
        for record in load_records(spec, limit):
            if text_field not in record:
                raise DataError(f"{spec} has a record without the field {text_field!r} "
                                f"(fields: {', '.join(map(str, record))}).",
                                "pass text_field= the name of the text column.")
            texts.append(str(record[text_field]))
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError(f"{spec} gave no text for split {split!r}.",
                        "use a dataset with non-empty text.")
    return texts
