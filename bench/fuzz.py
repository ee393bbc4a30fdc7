"""Fuzz campaign for issue 17: every property of tests/test_fuzz.py, for a time budget, without stopping
at the first failure. Prints each distinct failure (property, kind, where in slimkit it was raised) with
how often it occurred and the smallest input that showed it.

    python bench/fuzz.py                      # 30 minutes over all properties
    python bench/fuzz.py --minutes 5 --only spec,npz
    python bench/fuzz.py --list

The properties (exit code 0 or 2, no traceback, one-line errors, bounded memory, no file outside the
output changed, nothing half-made) are the ones ``pytest tests/test_fuzz.py`` checks; there hypothesis
stops at a property's first failure and shrinks it, here every failure is counted. Exit code 0 unless
``--strict`` (then 1 when anything failed), so ``make bench`` goes on to the other benchmarks.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tests.test_fuzz as F  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


class _Stop(BaseException):
    """The property's time share is used up (BaseException: hypothesis lets it through)."""


def properties(assets: Path, scratch: Path) -> dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], object]]]:
    timeout = F.TIMEOUT["long"]
    counter = itertools.count()

    def folder() -> Path:
        path = scratch / str(next(counter))
        path.mkdir()
        return path

    def recipe_load(recipe: F.RecipeFile) -> None:
        where = folder()
        try:
            F.check_recipe_load(where, recipe, timeout)
        finally:
            shutil.rmtree(where, ignore_errors=True)

    def npz_load(case: F.NpzCase) -> None:
        where = folder()
        try:
            F.check_npz_load(where, case, timeout)
        finally:
            shutil.rmtree(where, ignore_errors=True)

    props: dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], object]]] = {
        "spec": (F.spec_cases, lambda case: F.check_spec_case(assets, case, timeout)),
        "recipe-load": (F.recipe_files, recipe_load),
        "npz-load": (F.npz_cases, npz_load),
        "npz-cli": (
            st.tuples(F.npz_cases, st.sampled_from(sorted(F.NPZ_VERBS))),
            lambda pair: F.check_npz_cli(assets, pair[0], pair[1], timeout),
        ),
    }
    for verb in sorted(F.VERBS):
        props[f"cli-{verb}"] = (F.commands(verb), lambda cmd: F.check_command(assets, cmd, timeout))
    props["recipe-optimize"] = (F.recipe_files, lambda recipe: F.check_recipe_cli(assets, recipe, timeout))
    return props


def signature(exc: BaseException) -> tuple[str, str]:
    """(kind, where): the violated property or exception type, and the deepest slimkit frame that raised."""
    kind = type(exc).__name__
    cause: BaseException | None = exc
    while isinstance(cause, F.TimeoutViolation) and cause.__cause__ is not None:
        cause = cause.__cause__  # where the hung run was when the alarm rang
    where = ""
    for frame in traceback.extract_tb(cause.__traceback__) if cause is not None else []:
        if "/slimkit/" in frame.filename.replace("\\", "/") and "test_fuzz" not in frame.filename:
            where = (
                f"{Path(frame.filename).relative_to(ROOT / 'src') if 'src' in frame.filename else frame.filename}"
                f":{frame.lineno} ({frame.name})"
            )
    if isinstance(exc, F.PropertyViolation) and not where:
        where = str(exc).split(":", 1)[0][:80]  # the command line, e.g. "slimkit prune model -o out"
        where = " ".join(where.split()[:2])
    return kind, where


def campaign(
    name: str,
    strategy: st.SearchStrategy[Any],
    check: Callable[[Any], object],
    seconds: float,
    found: dict[tuple[str, str, str], dict[str, Any]],
) -> tuple[int, float]:
    start = time.monotonic()
    runs = 0

    @settings(
        max_examples=10**9,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @seed(int.from_bytes(os.urandom(8), "big"))  # an explicit seed: no "add @seed(...)" hint when time is up
    @given(value=strategy)
    def run(value: Any) -> None:
        nonlocal runs
        if time.monotonic() - start > seconds:
            raise _Stop
        runs += 1
        try:
            check(value)
        except Exception as exc:  # every failure is recorded; hypothesis never sees one, so it never stops
            kind, where = signature(exc)
            entry = found.setdefault((name, kind, where), {"count": 0, "input": None, "message": ""})
            entry["count"] += 1
            shown = repr(value)
            if entry["input"] is None or len(shown) < len(entry["input"]):
                entry["input"] = shown
                entry["message"] = (f"{type(exc).__name__}: {exc}").strip().splitlines()[0][:300]

    with contextlib.suppress(_Stop):
        run()
    return runs, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="Total budget, shared by the properties.")
    parser.add_argument("--only", default="", help="Comma-separated substrings of property names to run.")
    parser.add_argument("--list", action="store_true", help="List the properties and exit.")
    parser.add_argument("--strict", action="store_true", help="Exit 1 when anything failed.")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="slimkit-fuzz-"))
    try:
        assets = F.build_assets(base / "assets")
        scratch = base / "scratch"
        scratch.mkdir()
        props = properties(assets, scratch)
        if args.list:
            print("\n".join(props))
            return 0
        wanted = [w for w in args.only.split(",") if w]
        chosen = {k: v for k, v in props.items() if not wanted or any(w in k for w in wanted)}
        share = 60 * args.minutes / max(1, len(chosen))
        found: dict[tuple[str, str, str], dict[str, Any]] = {}
        for name, (strategy, check) in chosen.items():
            runs, took = campaign(name, strategy, check, share, found)
            failures = sum(e["count"] for (n, _, _), e in found.items() if n == name)
            print(f"{name:<22} {runs:>6} inputs in {took:6.0f} s, {failures} failed", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"\n{len(found)} distinct failures")
    for (name, kind, where), entry in sorted(found.items()):
        print(f"\n[{name}] {kind} at {where or '?'}  (x{entry['count']})")
        print(f"  {entry['message']}")
        print(f"  smallest input: {entry['input'][:600]}")
    return 1 if args.strict and found else 0


if __name__ == "__main__":
    sys.exit(main())
