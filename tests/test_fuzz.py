"""Property / fuzz tests of everything a user hands slimkit (issue 17).

Hostile ``spec.json`` files, recipe files, ``.npz`` datasets and command-line option values, made by
hypothesis. Every ``slimkit`` run must:

- end with exit code 0 or 2, never a traceback: nothing but SystemExit escapes ``main`` (runs have
  ``SLIMKIT_DEBUG=1``, so a bug raises its exception here instead of exiting 1 with "internal error");
- on exit 2, end stderr with exactly one line ``error: ...`` (progress lines may come before it); click's
  own usage errors for options it cannot parse (``Usage: ...`` / a boxed ``Error``) are accepted too;
- stay within a memory budget: peak RSS grows by at most ``MEMORY_BUDGET`` during the run, and an
  address-space ceiling turns runaway allocations into errors instead of an out-of-memory kill;
- stay within a time limit (``TIMEOUT``: a run past it counts as hung);
- change no file outside its output (``-o`` / ``--json``; new parent folders of the output are fine), and
  on exit 2 change nothing at all: no half-made output, no temporary files left behind.

Library calls are held to the same contract: ``Recipe.load`` and ``slimkit.data.load`` raise SlimkitError
or return something usable.

The command line runs in-process (``slimkit.cli.main`` with a patched ``sys.argv``, inside a fresh
workspace that is the working directory); the memory cases of ``test_memory_subprocess`` run the real
entry point (``python -m slimkit``) in a subprocess and read its peak RSS.

Fast mode (``make test``): a few deterministic examples per property, no shrinking, ~25 s in all.
Long mode (``make bench`` runs ``pytest -m slow``: the ``[long]`` variants, the optimize loop with hostile
recipes, more memory cases; or ``SLIMKIT_FUZZ=long`` makes the fast variants long too): hundreds to
thousands of random examples per property, shrunk to a minimal failing input. ``bench/fuzz.py`` runs every
property for a time budget without stopping at the first failure and prints each distinct one.
``test_known_hostile_inputs`` holds the minimal failing inputs found so far, by name.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import slimkit as sk
from slimkit.cli import main
from slimkit.core.errors import SlimkitError
from slimkit.optimize.recipe import STEP_TYPES, Recipe

# ----------------------------------------------------------------------------------------------------------------------
# Modes and budgets

LONG = os.environ.get("SLIMKIT_FUZZ", "").lower() == "long"
MODES = [pytest.param("fast", id="fast"), pytest.param("long", id="long", marks=pytest.mark.slow)]
TIMEOUT = {"fast": 60.0, "long": 180.0}  # seconds one run may take before it counts as hung

MEMORY_BUDGET = 1 << 30  # peak RSS growth allowed during one run
ADDRESS_HEADROOM = 4 << 30  # address-space ceiling during a run: the process's current size + this

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(  # no shrinking: a failure costs seconds, not minutes, inside `make test`
    "slimkit-fast",
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=_HEALTH,
    print_blob=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
settings.register_profile("slimkit-long", deadline=None, suppress_health_check=_HEALTH, report_multiple_bugs=True)


def fuzz_settings(mode: str, fast: int, long: int) -> settings:
    """Hypothesis settings: ``fast`` deterministic examples, or ``long`` random ones (slow tests, SLIMKIT_FUZZ=long)."""
    if mode == "long" or LONG:
        return settings(settings.get_profile("slimkit-long"), max_examples=long)
    return settings(settings.get_profile("slimkit-fast"), max_examples=fast)


def timeout_for(mode: str) -> float:
    return TIMEOUT["long" if mode == "long" or LONG else "fast"]


# ----------------------------------------------------------------------------------------------------------------------
# Violations: one class per property, so hypothesis reports each kind of failure separately


class PropertyViolation(AssertionError):
    """A slimkit run broke one of the properties above."""


class ExitCodeViolation(PropertyViolation):
    pass


class TracebackViolation(PropertyViolation):
    pass


class ErrorMessageViolation(PropertyViolation):
    pass


class MemoryViolation(PropertyViolation):
    pass


class FileChangedViolation(PropertyViolation):
    pass


class HalfMadeOutputViolation(PropertyViolation):
    pass


class TimeoutViolation(PropertyViolation):
    pass


class ContractViolation(PropertyViolation):
    """A library call returned something inconsistent (e.g. a dataset whose labels exceed its classes)."""


class _Alarm(BaseException):  # BaseException: not swallowed by ``except Exception`` in the code under test
    pass


# ----------------------------------------------------------------------------------------------------------------------
# Guarded execution: wall-clock limit, address-space ceiling, peak RSS


def _proc_status(key: str) -> int:
    """A ``/proc/self/status`` figure in bytes (0 where there is no /proc)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else 0


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _on_alarm(signum: int, frame: object) -> None:
    raise _Alarm


@dataclasses.dataclass
class Usage:
    seconds: float = 0.0
    peak: int | None = None  # peak RSS growth in bytes, None when it cannot be measured
    ceiling: int | None = None  # the address-space ceiling in force, in bytes


@contextlib.contextmanager
def guarded(timeout: float, what: str) -> Iterator[Usage]:
    """Run a block under a wall-clock limit and an address-space ceiling; measure its peak RSS growth.

    A hung block raises :class:`TimeoutViolation`; an allocation beyond the ceiling fails inside the block
    (MemoryError / torch's "can't allocate memory") and is annotated as such.
    """
    usage = Usage()
    rss0, measured = _proc_status("VmRSS"), _reset_peak_rss()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    size = _proc_status("VmSize")
    if size:
        usage.ceiling = size + ADDRESS_HEADROOM
        if hard != resource.RLIM_INFINITY:
            usage.ceiling = min(usage.ceiling, hard)
        if soft == resource.RLIM_INFINITY or usage.ceiling < soft:
            resource.setrlimit(resource.RLIMIT_AS, (usage.ceiling, hard))
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    start = time.perf_counter()
    try:
        yield usage
    except _Alarm as exc:
        raise TimeoutViolation(f"{what}: still running after {timeout:.0f} s") from exc
    except BaseException as exc:
        _annotate(exc, what, usage)
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        usage.seconds = time.perf_counter() - start
        if measured:
            usage.peak = _proc_status("VmHWM") - rss0


def _annotate(exc: BaseException, what: str, usage: Usage) -> None:
    if not hasattr(exc, "add_note") or isinstance(exc, SystemExit | PropertyViolation):
        return
    exc.add_note(f"escaped from: {what}")
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError) or "can't allocate memory" in text or "Cannot allocate memory" in text:
        gib = (usage.ceiling or 0) / 2**30
        exc.add_note(
            f"(an allocation went past the test's address-space ceiling of {gib:.1f} GiB: the input asks "
            f"for memory out of all proportion to its size)"
        )


# ----------------------------------------------------------------------------------------------------------------------
# Workspace snapshots


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (not following links): kind, and size + mtime + hash for files."""
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            st_ = path.lstat()
            if stat.S_ISLNK(st_.st_mode):
                state[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st_.st_mode):
                state[rel] = ("dir",)
            else:
                digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest() if st_.st_size < 1 << 26 else ""
                state[rel] = ("file", st_.st_size, st_.st_mtime_ns, digest)
    return state


def changes(
    before: dict[str, tuple], after: dict[str, tuple], exclude: Sequence[str] = (), exact: Sequence[str] = ()
) -> list[str]:
    """Entries added, removed or modified, outside the ``exclude`` paths (relative, '.' = everything) and
    other than the ``exact`` entries."""

    def excluded(rel: str) -> bool:
        return rel in exact or any(e == "." or rel == e or rel.startswith(e + "/") for e in exclude)

    out = []
    for rel in sorted(before.keys() | after.keys()):
        if before.get(rel) != after.get(rel) and not excluded(rel):
            how = "added" if rel not in before else "removed" if rel not in after else "modified"
            out.append(f"{rel} ({how})")
    return out


def _ancestors(rel: str) -> list[str]:
    """'a/b/c' -> ['a', 'a/b']."""
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def relative(ws: Path, path: str | os.PathLike[str]) -> str:
    """``path`` (relative to the workspace, or absolute) as a normalised workspace-relative path."""
    full = os.path.normpath(os.path.join(ws, os.fspath(path)))
    return os.path.relpath(full, ws).replace(os.sep, "/")


# ----------------------------------------------------------------------------------------------------------------------
# Running the command line


@dataclasses.dataclass
class Result:
    argv: list[str]
    code: int
    out: str
    err: str
    usage: Usage

    @property
    def shown(self) -> str:
        return f"slimkit {shlex.join(self.argv)}"


def is_user_error(err: str, out: str = "") -> bool:
    """One ``error: ...`` line, last on stderr (progress lines may come before it); or click's usage error for
    an option it cannot parse (``Usage: ...`` and a boxed ``Error``, or the box alone for an option missing its
    value); or click's help on stdout for a bare ``slimkit``."""
    if err.startswith(("Usage: ", "╭─ Error", "Error: ")) or (not err and "Usage:" in out):
        return True
    lines = [line for line in err.split("\n") if line.strip()]  # progress lines may come first
    errors = [line for line in lines if line.startswith("error:")]
    return len(errors) == 1 and lines[-1] == errors[0] and len(errors[0].strip()) > len("error:")


def run_cli(
    ws: Path, argv: Sequence[object], outputs: Sequence[str | os.PathLike[str]] = (), *, timeout: float
) -> Result:
    """Run ``slimkit *argv`` in-process with ``ws`` as working directory and check every property.

    ``outputs``: the paths the run may create or replace (its ``-o`` / ``--json``). The run has
    ``SLIMKIT_DEBUG=1``, so a bug re-raises its exception instead of printing "error: internal error" and
    exiting 1; anything escaping ``main`` other than SystemExit is re-raised with the command line attached.
    """
    argv = [str(a) for a in argv]
    shown = f"slimkit {shlex.join(argv)}"
    targets = [relative(ws, o) for o in outputs]
    before = snapshot(ws)
    existed = {t: os.path.lexists(ws / t) for t in targets}
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd, saved_debug = sys.argv, os.getcwd(), os.environ.get("SLIMKIT_DEBUG")
    code = 0
    try:
        sys.argv = ["slimkit", *argv]
        os.environ["SLIMKIT_DEBUG"] = "1"  # a bug re-raises its exception (else: exit 1, "error: internal error")
        os.chdir(ws)
        with guarded(timeout, shown) as usage, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except BaseException as exc:
        if hasattr(exc, "add_note") and not isinstance(exc, PropertyViolation):
            exc.add_note(f"stderr so far: {err.getvalue()[-1000:]!r}")
        raise
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        if saved_debug is None:
            os.environ.pop("SLIMKIT_DEBUG", None)
        else:
            os.environ["SLIMKIT_DEBUG"] = saved_debug
    result = Result(argv, code, out.getvalue(), err.getvalue(), usage)
    check_result(ws, result, before, targets, existed)
    return result


def check_result(ws: Path, r: Result, before: dict[str, tuple], targets: list[str], existed: dict[str, bool]) -> None:
    tail = f"\n--- stderr ---\n{r.err[-3000:]}\n--- stdout (end) ---\n{r.out[-1000:]}"
    if r.code not in (0, 2):
        raise ExitCodeViolation(f"{r.shown}: exit code {r.code}{tail}")
    if "Traceback (most recent call last)" in r.out + r.err:
        raise TracebackViolation(f"{r.shown}: printed a traceback{tail}")
    if r.code == 2 and not is_user_error(r.err, r.out):
        raise ErrorMessageViolation(f"{r.shown}: exit 2 without a one-line 'error: ...' message{tail}")
    if r.usage.peak is not None and r.usage.peak > MEMORY_BUDGET:
        raise MemoryViolation(
            f"{r.shown}: peak RSS grew by {r.usage.peak / 2**20:.0f} MiB (budget {MEMORY_BUDGET / 2**20:.0f} MiB){tail}"
        )
    after = snapshot(ws)
    if r.code == 2:
        half = [t for t in targets if not existed[t] and os.path.lexists(ws / t)]
        if half:
            raise HalfMadeOutputViolation(f"{r.shown}: failed (exit 2) but left output {half}{tail}")
        changed = changes(before, after)
        if changed:
            raise FileChangedViolation(f"{r.shown}: failed (exit 2) but changed {changed[:12]}{tail}")
    else:
        created = [a for t in targets for a in _ancestors(t) if a not in before and after.get(a) == ("dir",)]
        changed = changes(before, after, exclude=targets, exact=created)  # new parent folders of the output
        if changed:
            raise FileChangedViolation(f"{r.shown}: changed files outside its output {targets}: {changed[:12]}{tail}")


# ----------------------------------------------------------------------------------------------------------------------
# Assets (built once per session) and per-example workspaces

# lenet5 checkpoints: plain zoo kwargs, recorded changes (channel pruning), sparse and palette codecs
VARIANTS = ("plain", "pruned", "sparse", "clustered")
N_SAMPLES = 200  # data.npz: 200 random 1x28x28 images, 10 classes (the lenet5 defaults)


def build_assets(root: Path) -> Path:
    """Checkpoints of each variant, a second plain one, data.npz, a valid recipe, a text file."""
    from slimkit.compress import ClusterConfig
    from slimkit.prune import ChannelPruneConfig, MagnitudePruneConfig

    root.mkdir(parents=True, exist_ok=True)
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    configs = {
        "plain": None,
        "pruned": ChannelPruneConfig(ratio=0.5),
        "sparse": MagnitudePruneConfig(sparsity=0.9),
        "clustered": ClusterConfig(k=4),
    }
    for seed, (name, cfg) in enumerate(configs.items()):
        torch.manual_seed(seed)
        model = sk.zoo.create("lenet5")
        if cfg is not None:
            sk.apply_(model, cfg, example_inputs=x)
        sk.save(model, root / name, example=x)
    torch.manual_seed(10)
    sk.save(sk.zoo.create("lenet5"), root / "plain2", example=x)
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.random((N_SAMPLES, 1, 28, 28), dtype=np.float32), y=np.arange(N_SAMPLES) % 10)
    (root / "recipe.json").write_text(json.dumps({"steps": [{"FoldConfig": {}}]}))
    (root / "notes.txt").write_text("a file no run may touch\n")
    return root


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_assets(tmp_path_factory.mktemp("fuzz-assets"))


@contextlib.contextmanager
def workspace(assets: Path, model: str = "plain") -> Iterator[Path]:
    """A fresh folder: model/ (checkpoint ``model``), model2/, data.npz, recipe.json, notes.txt,
    alias -> model, dangling -> nowhere. Removed afterwards."""
    ws = Path(tempfile.mkdtemp(prefix="ws-", dir=assets.parent))
    try:
        shutil.copytree(assets / model, ws / "model")
        shutil.copytree(assets / "plain2", ws / "model2")
        for name in ("data.npz", "recipe.json", "notes.txt"):
            shutil.copy2(assets / name, ws / name)
        (ws / "alias").symlink_to("model")
        (ws / "dangling").symlink_to("nowhere")
        yield ws
    finally:
        shutil.rmtree(ws, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------------
# Hostile JSON values


class Raw(str):
    """JSON text written verbatim (numbers and nesting ``json.dumps`` cannot or will not write)."""

    def __repr__(self) -> str:
        return f"Raw({str(self)[:40]!r}{'...' if len(self) > 40 else ''} len={len(self)})"


def dump(value: Any) -> str:
    """JSON text of ``value`` (NaN / Infinity allowed, :class:`Raw` pieces verbatim)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dump(v) for v in value) + "]"
    return json.dumps(value)


HOSTILE_NUMBERS = [
    0,
    -1,
    1,
    2,
    3,
    255,
    256,
    2**31,
    2**63,
    -(2**63) - 1,
    10**12,
    10**30,
    0.5,
    -0.5,
    1e-300,
    1e6,
    1e300,
    -1e300,
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    False,
]
RAW_TOKENS = [
    Raw("1" + "0" * 5000),  # beyond Python's 4300-digit int parsing limit: ValueError, not JSONDecodeError
    Raw("1e400"),
    Raw("-1e400"),
    Raw("-0"),
    Raw("[" * 3000 + "]" * 3000),  # deeper than the recursion limit
    Raw('{"a": ' * 3000 + "1" + "}" * 3000),
]
KNOWN_STRINGS = [
    "lenet5",
    "seed_cnn",
    "resnet_cifar",
    "mobilenet_v2",
    "text_lstm",
    "recsys_mlp",
    "zoo",
    "factory",
    "sparse",
    "palette",
    "dense",
    "replace",
    "set",
    "tie",
    "Conv2d",
    "Linear",
    "Sequential",
    "BatchNorm2d",
    "MaxPool2d",
    "float32",
    "int64",
    "float16",
    "bfloat16",
    "complex64",
    "bool",
    "conv1",
    "fc1",
    "conv1.weight",
    "fc3.bias",
    "builtins:eval",
    "slimkit.zoo:create",
    "slimkit.checkpoint",
    "",
    " ",
    "\u00e9\u4e2d",
    "../../etc/passwd",
]
KNOWN_KEYS = [
    "kind",
    "name",
    "kwargs",
    "width",
    "num_classes",
    "in_channels",
    "input_size",
    "op",
    "path",
    "module",
    "type",
    "args",
    "attr",
    "value",
    "source",
    "codec",
    "shape",
    "bits",
    "input",
    "dtype",
    "changes",
    "format",
    "version",
    "arch",
    "tied",
    "encodings",
    "steps",
    "",
]

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from(HOSTILE_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(KNOWN_STRINGS),
    st.sampled_from(RAW_TOKENS),
)
json_values = st.recursive(
    leaves,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=10,
)

# ----------------------------------------------------------------------------------------------------------------------
# spec.json mutations


@dataclasses.dataclass(frozen=True)
class Mutation:
    """Walk ``where`` into the spec (a str: that key, created if missing; an int: the i-th child, modulo), then
    ``set`` the value there, ``delete`` it, ``wrap`` it in a list, ``append`` the value to it (a list), or
    ``scale`` it (numbers: times ``value``; lists: repeated)."""

    where: tuple[str | int, ...]
    op: str
    value: Any = None


SPEC_PATHS: list[tuple[str | int, ...]] = [
    ("format",),
    ("version",),
    ("arch",),
    ("arch", "kind"),
    ("arch", "name"),
    ("arch", "kwargs"),
    ("arch", "kwargs", "width"),
    ("arch", "kwargs", "num_classes"),
    ("arch", "kwargs", "in_channels"),
    ("arch", "kwargs", "input_size"),
    ("arch", "input"),
    ("arch", "input", "shape"),
    ("arch", "input", "shape", 0),
    ("arch", "input", "dtype"),
    ("arch", "changes"),
    ("arch", "changes", 0),
    ("arch", "changes", 0, "op"),
    ("arch", "changes", 0, "path"),
    ("arch", "changes", 0, "module", "type"),
    ("arch", "changes", 0, "module", "args"),
    ("arch", "changes", 0, "module", "args", 1),
    ("arch", "factory"),
    ("tied",),
    ("tied", "fc1.weight"),
    ("encodings",),
    ("encodings", 0),
    ("encodings", 0, "codec"),
    ("encodings", 0, "shape"),
    ("encodings", 0, "shape", 0),
    ("encodings", 0, "bits"),
    ("history",),
    ("history", 0, "config"),
]
SCALES = [-1, 0, 10, 1000, 10**6, 10**12, 1e300, float("nan"), float("inf")]


# Well-formed but hostile pieces of a spec: recorded changes, tensor encodings, ties, input descriptions
MODULE_TYPES = [
    "Conv2d",
    "Linear",
    "BatchNorm2d",
    "BatchNorm1d",
    "ReLU",
    "Identity",
    "MaxPool2d",
    "Dropout",
    "Flatten",
    "Embedding",
    "LSTM",
    "Sequential",
    "Module",
    "os.system",
    "",
]
ARG_NAMES = [
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "bias",
    "padding_mode",
    "in_features",
    "out_features",
    "num_features",
    "eps",
    "momentum",
    "p",
    "inplace",
    "num_embeddings",
    "embedding_dim",
    "input_size",
    "hidden_size",
    "num_layers",
    "start_dim",
]
ARG_VALUES = (
    st.sampled_from(
        [
            0,
            1,
            2,
            3,
            5,
            6,
            16,
            120,
            -1,
            10**9,
            2**31,
            0.5,
            True,
            False,
            None,
            "zeros",
            "reflect",
            "x",
            [5, 5],
            [0, 0],
            [],
            [1, 2, 3],
        ]
    )
    | leaves
)
LAYER_PATHS = ["conv1", "conv2", "fc1", "fc2", "fc3", "relu1", "pool1", "flatten", "", "nope", "conv1.weight", "fc1.0"]
ATTRS = [
    "stride",
    "padding",
    "dilation",
    "groups",
    "in_channels",
    "out_channels",
    "in_features",
    "out_features",
    "weight",
    "bias",
    "training",
    "inplace",
    "kernel_size",
    "padding_mode",
    "eps",
    "momentum",
    "__class__",
    "forward",
    "_parameters",
    "start_dim",
    "p",
]
TENSOR_NAMES = [
    "conv1.weight",
    "conv1.bias",
    "conv2.weight",
    "fc1.weight",
    "fc2.weight",
    "fc3.weight",
    "fc3.bias",
    "nope",
    "",
]
module_specs = st.recursive(
    st.builds(
        lambda t, a: {"type": t, "args": a},
        st.sampled_from(MODULE_TYPES),
        st.dictionaries(st.sampled_from(ARG_NAMES), ARG_VALUES, max_size=4),
    ),
    lambda kids: st.builds(lambda c: {"type": "Sequential", "children": c}, st.lists(kids, max_size=3)),
    max_leaves=4,
)
change_specs = st.one_of(
    st.fixed_dictionaries({"op": st.just("replace"), "path": st.sampled_from(LAYER_PATHS), "module": module_specs}),
    st.fixed_dictionaries(
        {
            "op": st.just("set"),
            "path": st.sampled_from(LAYER_PATHS),
            "attr": st.sampled_from(ATTRS),
            "value": ARG_VALUES,
        }
    ),
    st.fixed_dictionaries(
        {
            "op": st.sampled_from(["tie", "x"]),
            "path": st.sampled_from(LAYER_PATHS),
            "attr": st.sampled_from(["weight", "bias"]),
            "source": st.sampled_from(TENSOR_NAMES),
        }
    ),
)
SIZES = st.sampled_from([0, 1, 4, 5, 6, 16, 120, 400, -1, 10**6, 2**40])
encoding_specs = st.fixed_dictionaries(
    {"codec": st.sampled_from(["sparse", "palette", "dense", "x"]), "shape": st.lists(SIZES, max_size=4)},
    optional={"bits": st.sampled_from([0, 1, 2, 3, 8, 9, -1, 2.0])},
)
input_specs = st.fixed_dictionaries(
    {"shape": st.lists(SIZES, max_size=4), "dtype": st.sampled_from(["float32", "int64", "bool", "float16", "x"])}
)


def _mutations() -> st.SearchStrategy[Mutation]:
    where = st.sampled_from(SPEC_PATHS) | st.lists(st.integers(0, 50), max_size=6).map(tuple)
    return st.one_of(
        st.builds(Mutation, where, st.just("set"), json_values),
        st.builds(Mutation, where, st.just("delete")),
        st.builds(Mutation, where, st.just("wrap")),
        st.builds(Mutation, where, st.just("scale"), st.sampled_from(SCALES)),
        st.builds(Mutation, st.just(("arch", "changes")), st.just("append"), change_specs),
        st.builds(
            Mutation, st.sampled_from(TENSOR_NAMES).map(lambda n: ("encodings", n)), st.just("set"), encoding_specs
        ),
        st.builds(
            Mutation,
            st.sampled_from(TENSOR_NAMES).map(lambda n: ("tied", n)),
            st.just("set"),
            st.sampled_from(TENSOR_NAMES),
        ),
        st.builds(Mutation, st.just(("arch", "input")), st.just("set"), input_specs),
    )


def apply_mutation(doc: Any, m: Mutation) -> Any:
    """``doc`` after the mutation (``doc`` itself may be changed)."""
    holder = {"": doc}
    parent: Any = holder
    key: Any = ""
    for i, step in enumerate(m.where):
        node = parent[key]
        if isinstance(step, str):
            if not isinstance(node, dict):
                break
            if step not in node and i < len(m.where) - 1:
                node[step] = {}
            parent, key = node, step
        else:
            if not isinstance(node, dict | list) or not node:
                break
            keys = list(node) if isinstance(node, dict) else range(len(node))
            parent, key = node, list(keys)[step % len(node)]
    exists = key in parent if isinstance(parent, dict) else True
    if m.op == "set":
        parent[key] = copy.deepcopy(m.value)
    elif m.op == "delete" and exists:
        if parent is holder:
            return None
        del parent[key]
    elif m.op == "wrap" and exists:
        parent[key] = [parent[key]]
    elif m.op == "append":
        if exists and isinstance(parent[key], list):
            parent[key].append(copy.deepcopy(m.value))
        else:
            parent[key] = [copy.deepcopy(m.value)]
    elif m.op == "scale" and exists:
        node = parent[key]
        if isinstance(node, bool):
            parent[key] = not node
        elif isinstance(node, int | float):
            parent[key] = node * m.value
        elif isinstance(node, list) and isinstance(m.value, int) and 0 < m.value <= 1000:
            parent[key] = node * m.value
    return holder[""]


WHOLE_DOCUMENTS = ["json", "deep", "truncated", "not-utf8", "bom", "empty", "flipped-byte"]


@dataclasses.dataclass(frozen=True)
class SpecCase:
    """A checkpoint variant whose spec.json gets ``mutations`` (or is replaced by a ``whole`` document); then
    the command ``verb`` (a key of SPEC_VERBS) runs on it."""

    variant: str
    mutations: tuple[Mutation, ...] = ()
    whole: tuple[str, Any] | None = None
    verb: str = "evaluate"

    def text(self, original: bytes) -> bytes:
        if self.whole is None:
            doc = json.loads(original)
            for m in self.mutations:
                doc = apply_mutation(doc, m)
            return dump(doc).encode("utf-8", "surrogatepass")
        kind, param = self.whole
        if kind == "json":
            return dump(param).encode("utf-8", "surrogatepass")
        if kind == "deep":
            return ("[" * param + "]" * param).encode()
        if kind == "truncated":
            return original[: int(len(original) * param)]
        if kind == "not-utf8":
            return b"\xff\xfe{" + original[1:]
        if kind == "bom":
            return "\ufeff".encode() + original
        if kind == "flipped-byte":
            pos = param % len(original)
            return original[:pos] + bytes([original[pos] ^ 0x20]) + original[pos + 1 :]
        return b""


SPEC_VERBS: dict[str, tuple[list[str], list[str]]] = {  # verb -> (argv, outputs)
    "evaluate": (["evaluate", "model", "-d", "data.npz", "--no-latency"], []),
    "evaluate-factory": (
        ["evaluate", "model", "-d", "data.npz", "--no-latency", "--factory", "slimkit.zoo.cnn:lenet5"],
        [],
    ),
    "prune": (["prune", "model", "-o", "out", "--ratio", "0.3"], ["out"]),
    "simplify": (["simplify", "model", "-o", "out", "--fold"], ["out"]),
    "compress": (["compress", "model", "--lowrank", "0.5", "-o", "out"], ["out"]),
    "export": (["export", "model", "-o", "out.onnx"], ["out.onnx"]),
}


def _whole() -> st.SearchStrategy[tuple[str, Any]]:
    return st.one_of(
        st.tuples(st.just("json"), json_values),
        st.tuples(st.just("deep"), st.sampled_from([10, 2000, 100_000])),
        st.tuples(st.just("truncated"), st.floats(0, 1)),
        st.tuples(st.sampled_from(["not-utf8", "bom", "empty"]), st.none()),
        st.tuples(st.just("flipped-byte"), st.integers(0, 10**6)),
    )


spec_cases = st.builds(
    SpecCase,
    variant=st.sampled_from(VARIANTS),
    mutations=st.lists(_mutations(), min_size=1, max_size=3).map(tuple),
    whole=st.none() | st.none() | st.none() | _whole(),
    verb=st.sampled_from(["evaluate"] * 4 + ["evaluate-factory", "prune", "simplify", "compress", "export"]),
)


def check_spec_case(assets: Path, case: SpecCase, timeout: float) -> Result:
    with workspace(assets, case.variant) as ws:
        spec = ws / "model" / "spec.json"
        spec.write_bytes(case.text(spec.read_bytes()))
        argv, outputs = SPEC_VERBS[case.verb]
        return run_cli(ws, argv, outputs, timeout=timeout)


@pytest.mark.parametrize("mode", MODES)
def test_spec_json(assets: Path, mode: str) -> None:
    """A damaged or hostile spec.json: load it through evaluate / prune / simplify / compress / export."""

    @fuzz_settings(mode, fast=30, long=1500)
    @given(case=spec_cases)
    def prop(case: SpecCase) -> None:
        check_spec_case(assets, case, timeout_for(mode))

    prop()


# ----------------------------------------------------------------------------------------------------------------------
# Recipe files

STEP_NAMES = [t.__name__ for t in STEP_TYPES] + ["MagnitudePruneConfig", "ClusterConfig", "Config", "Recipe", "", "x"]
STEP_FIELDS = {t.__name__: [f.name for f in dataclasses.fields(t)] for t in STEP_TYPES}
PLAUSIBLE = [0.25, 0.5, 0.9, 1, 2, 3, 8, "auto", "l2", "sensitivity", "static", "dynamic", [0.5], [], None, True]
field_values = st.sampled_from(PLAUSIBLE) | st.sampled_from(HOSTILE_NUMBERS) | json_values


@st.composite
def recipe_steps(draw: st.DrawFn) -> Any:
    name = draw(st.sampled_from(STEP_NAMES) | st.text(max_size=8))
    known = STEP_FIELDS.get(name, [])
    keys = draw(
        st.lists(
            st.sampled_from([*known, "type", "version"]) if known else st.sampled_from(["type", "x"]),
            max_size=4,
            unique=True,
        )
    )
    if draw(st.booleans()):
        keys.append(draw(st.text(max_size=5)))
    fields = {k: draw(field_values) for k in keys}
    form = draw(st.sampled_from(["typed", "keyed", "keyed-scalar", "random"]))
    if form == "typed":
        return {"type": name, **fields}
    if form == "keyed":
        return {name: fields}
    if form == "keyed-scalar":  # {"FineTuneConfig": 3}
        return {name: draw(json_values)}
    return draw(json_values)


recipe_docs = st.one_of(
    st.builds(
        lambda steps, extra: {"steps": steps, **extra},
        st.lists(recipe_steps(), max_size=4),
        st.dictionaries(st.sampled_from(["version", "name", "x"]), json_values, max_size=1),
    ),
    json_values,
)

HOSTILE_YAML = [
    "steps:\n  - !!python/object/apply:os.system ['echo pwned']\n",
    "steps: *undefined\n",
    "steps:\n\t- FoldConfig: {}\n",
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n"
    "steps: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n",  # billion laughs
    "steps:\n  - FineTuneConfig: {epochs: 2001-12-14}\n",
    "steps:\n  - {? [a, b] : c}\n",
    "steps: !!set {FoldConfig}\n",
    "steps:\n  - FineTuneConfig: !!binary aGVsbG8=\n",
    "steps:\n  - 5: {}\n",
    "steps:\n  - FineTuneConfig: {epochs: .inf}\n",
    "steps:\n  - FineTuneConfig: {lr: .nan}\n",
    "--- a\n--- b\n",
    "[" * 5000,
    "steps: [" + "[" * 3000 + "]" * 3000 + "]",
]


@dataclasses.dataclass(frozen=True)
class RecipeFile:
    name: str  # file name (its suffix picks the parser)
    doc: Any = None  # dumped as JSON (also valid YAML for the yaml suffixes)
    raw: bytes | None = None  # or these exact bytes

    def write(self, folder: Path) -> Path:
        path = folder / self.name
        if self.name.endswith("/"):  # a folder with the recipe's name
            path.mkdir(parents=True)
            return path
        path.write_bytes(self.raw if self.raw is not None else dump(self.doc).encode("utf-8", "surrogatepass"))
        return path


recipe_files = st.one_of(
    st.builds(RecipeFile, st.sampled_from(["r.json", "r.yaml", "r.yml", "r.JSON", "r.txt", "r"]), recipe_docs),
    st.builds(
        RecipeFile, st.sampled_from(["r.yaml", "r.yml"]), st.none(), st.sampled_from(HOSTILE_YAML).map(str.encode)
    ),
    st.builds(
        RecipeFile,
        st.sampled_from(["r.json", "r.yaml"]),
        st.none(),
        st.binary(max_size=40) | st.sampled_from([b"", b"\xff\xfe\x00{", b'\xef\xbb\xbf{"steps": []}']),
    ),
    st.builds(RecipeFile, st.just("folder.json/")),
)


def check_recipe_load(folder: Path, recipe: RecipeFile, timeout: float) -> None:
    """``Recipe.load`` raises SlimkitError or returns a recipe that survives to_dict / from_dict / JSON."""
    path = recipe.write(folder)
    what = f"Recipe.load({path.name!r}) of {recipe!r}"[:600]
    with guarded(timeout, what) as usage:
        try:
            loaded = Recipe.load(path)
        except SlimkitError:
            loaded = None
        if loaded is not None:
            again = Recipe.from_dict(loaded.to_dict())
            json.dumps(again.to_dict(), allow_nan=True)
    if usage.peak is not None and usage.peak > MEMORY_BUDGET:
        raise MemoryViolation(f"{what}: peak RSS grew by {usage.peak / 2**20:.0f} MiB")


@pytest.mark.parametrize("mode", MODES)
def test_recipe_load(tmp_path: Path, mode: str) -> None:
    """Parse-level: any recipe file gives a Recipe or a SlimkitError."""
    counter = iter(range(10**9))

    @fuzz_settings(mode, fast=80, long=5000)
    @given(recipe=recipe_files)
    def prop(recipe: RecipeFile) -> None:
        folder = tmp_path / str(next(counter))
        folder.mkdir()
        try:
            check_recipe_load(folder, recipe, timeout_for(mode))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    prop()


def check_recipe_cli(assets: Path, recipe: RecipeFile, timeout: float) -> Result:
    """``slimkit optimize --recipe FILE`` with a small time budget."""
    with workspace(assets) as ws:
        recipe.write(ws)
        argv = [
            "optimize",
            "model",
            "-d",
            "data.npz",
            "-o",
            "out",
            "-t",
            "macs=0.8",
            "--recipe",
            recipe.name,
            "--time-budget",
            "3s",
            "--no-quantize",
        ]
        return run_cli(ws, argv, ["out"], timeout=timeout)


@pytest.mark.slow
def test_recipe_optimize_cli(assets: Path) -> None:
    """The optimize loop with hostile recipes (long mode only: a valid recipe runs the whole loop)."""

    @fuzz_settings("long", fast=0, long=150)
    @given(recipe=recipe_files)
    def prop(recipe: RecipeFile) -> None:
        check_recipe_cli(assets, recipe, timeout_for("long"))

    prop()


# ----------------------------------------------------------------------------------------------------------------------
# .npz datasets


@dataclasses.dataclass(frozen=True)
class Arr:
    """An array to build: ``shape``, ``dtype``, filled with ``fill`` then ``specials`` (flat index, value)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    fill: str = "random"  # random | labels (0..high-1 repeating) | zeros
    high: int = 10
    specials: tuple[tuple[int, Any], ...] = ()

    def build(self) -> np.ndarray:
        n = math.prod(self.shape)
        if self.fill == "labels":
            base = (np.arange(n) % max(self.high, 1)).astype(np.float64)
        elif self.fill == "zeros":
            base = np.zeros(n)
        else:
            base = np.random.default_rng(n).random(n)
        dt = np.dtype(self.dtype)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            if dt.kind in "US":
                a = base.astype(str).astype(dt)
            elif dt.kind in "mM":
                a = base.astype(np.int64).astype(dt)
            elif dt.kind == "O":
                a = base.astype(object)
            else:
                a = base.astype(dt)
            for i, v in self.specials:
                if n:
                    with contextlib.suppress(ValueError, OverflowError, TypeError):
                        a[i % n] = v
        return a.reshape(self.shape)


X_DTYPES = [
    "float32",
    "float64",
    "float16",
    "int64",
    "uint8",
    "uint64",
    "int8",
    "bool",
    "complex64",
    "<U3",
    "datetime64[s]",
    "object",
]
Y_DTYPES = ["int64", "int32", "int8", "uint8", "uint64", "float32", "bool", "object", "<U2"]
SPECIAL_LABELS = [-1, -(2**31), 10, 11, 255, 10**6, 10**9, 2**62, 2**63 - 1]
SPECIAL_VALUES = [float("nan"), float("inf"), -float("inf"), 1e38, -1e38, 0.0, 255, -1]
SAMPLE_SHAPES = [(1, 28, 28)] * 6 + [(28, 28), (3, 28, 28), (1, 12, 12), (784,), (), (1, 0, 28), (1, 28, 28, 1)]
NPZ_KEYS = ["x", "y", "x_val", "y_val", "x_test", "y_test", "classes", "z", "x_train"]


@dataclasses.dataclass(frozen=True)
class NpzCase:
    """A dataset file: ``arrays`` saved with np.savez (or savez_compressed), or ``raw`` bytes, or a ``header``
    case (a zip whose x.npy claims ``header`` elements but holds none)."""

    name: str = "case.npz"
    arrays: tuple[tuple[str, Arr], ...] = ()
    compressed: bool = False
    raw: bytes | None = None
    header: tuple[int, ...] | None = None

    def write(self, folder: Path) -> Path:
        path = folder / self.name
        if self.name.endswith("/"):
            path.mkdir(parents=True)
            return path
        if self.raw is not None:
            path.write_bytes(self.raw)
        elif self.header is not None:
            with zipfile.ZipFile(path, "w") as z:
                with z.open("x.npy", "w") as f:
                    np.lib.format.write_array_header_1_0(
                        f, {"descr": "<f4", "fortran_order": False, "shape": self.header}
                    )
                buf = io.BytesIO()
                np.save(buf, np.zeros(4, dtype=np.int64))
                z.writestr("y.npy", buf.getvalue())
        else:
            with open(path, "wb") as f:  # np.savez on a path would append .npz to other names
                (np.savez_compressed if self.compressed else np.savez)(f, **{k: a.build() for k, a in self.arrays})
        return path


@st.composite
def near_valid_npz(draw: st.DrawFn) -> NpzCase:
    """x (N, 1, 28, 28) float32 and labels 0..K-1, then a few things wrong (or nothing)."""
    n = draw(st.integers(0, 120))
    shape = draw(st.sampled_from(SAMPLE_SHAPES))
    x_dtype = draw(st.sampled_from(["float32"] * 8 + X_DTYPES))
    specials = draw(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(SPECIAL_VALUES)), max_size=3))
    arrays = {"x": Arr((n, *shape), x_dtype, specials=tuple(specials))}
    y_len = n if draw(st.integers(0, 9)) else draw(st.integers(0, 130))
    y_shape = (y_len,) if draw(st.integers(0, 9)) else (y_len, 1)
    labels = draw(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(SPECIAL_LABELS)), max_size=2))
    arrays["y"] = Arr(
        y_shape, draw(st.sampled_from(["int64"] * 8 + Y_DTYPES)), "labels", draw(st.integers(1, 12)), tuple(labels)
    )
    for suffix in ("_val", "_test"):
        if draw(st.integers(0, 3)) == 0:
            m = draw(st.integers(0, 20))
            arrays[f"x{suffix}"] = Arr((m, *draw(st.sampled_from(SAMPLE_SHAPES))), "float32")
            if draw(st.integers(0, 5)):
                arrays[f"y{suffix}"] = Arr((m,), "int64", "labels", draw(st.integers(1, 12)))
    if draw(st.integers(0, 4)) == 0:
        arrays["classes"] = Arr((draw(st.integers(0, 12)),), draw(st.sampled_from(["<U5", "int64", "float32"])))
    if draw(st.integers(0, 9)) == 0:
        arrays[draw(st.sampled_from(["z", "x_train", "X"]))] = Arr((2,))
    if draw(st.integers(0, 9)) == 0:
        del arrays[draw(st.sampled_from(sorted(arrays)))]
    return NpzCase(arrays=tuple(arrays.items()), compressed=draw(st.booleans()))


wild_arrays = st.builds(
    Arr,
    shape=st.lists(st.integers(0, 5), max_size=4).map(tuple),
    dtype=st.sampled_from(X_DTYPES + Y_DTYPES),
    fill=st.sampled_from(["random", "labels", "zeros"]),
    high=st.integers(0, 20),
    specials=st.lists(st.tuples(st.integers(0, 100), st.sampled_from(SPECIAL_VALUES + SPECIAL_LABELS)), max_size=2).map(
        tuple
    ),
)

npz_cases = st.one_of(
    near_valid_npz(),
    near_valid_npz(),
    near_valid_npz(),
    st.builds(
        NpzCase,
        arrays=st.dictionaries(st.sampled_from(NPZ_KEYS), wild_arrays, max_size=5).map(lambda d: tuple(d.items())),
    ),
    st.builds(
        NpzCase,
        name=st.sampled_from(["case.npz", "case.NPZ", "case.npy", "case", "case.npz.gz"]),
        raw=st.binary(max_size=64) | st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06" + b"\x00" * 18]),
    ),
    st.builds(NpzCase, header=st.sampled_from([(10**6,), (10**9,), (10**12,), (10**10, 1, 28, 28), (2**62,), (-1,)])),
    st.just(NpzCase(name="folder.npz/")),
)


def check_dataset(ds: Any) -> None:
    """What a dataset returned by load must satisfy."""
    if not isinstance(ds, sk.data.Dataset):
        raise ContractViolation(f"load returned {type(ds).__name__}")
    k = len(ds.classes)
    for split, (x, y) in ds.splits.items():
        if len(x) != len(y):
            raise ContractViolation(f"{split}: {len(x)} inputs, {len(y)} labels")
        if y.dtype != torch.long:
            raise ContractViolation(f"{split}: labels of dtype {y.dtype}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            raise ContractViolation(f"{split}: labels {int(y.min())}..{int(y.max())} for {k} classes")


def check_npz_load(folder: Path, case: NpzCase, timeout: float) -> None:
    """``slimkit.data.load`` raises SlimkitError or returns a consistent dataset."""
    path = case.write(folder)
    what = f"slimkit.data.load({path.name!r}) of {case!r}"[:800]
    with guarded(timeout, what) as usage:
        try:
            ds = sk.data.load(str(path))
        except SlimkitError:
            ds = None
    if ds is not None:
        check_dataset(ds)
    if usage.peak is not None and usage.peak > MEMORY_BUDGET:
        raise MemoryViolation(f"{what}: peak RSS grew by {usage.peak / 2**20:.0f} MiB")


@pytest.mark.parametrize("mode", MODES)
def test_npz_load(tmp_path: Path, mode: str) -> None:
    counter = iter(range(10**9))

    @fuzz_settings(mode, fast=60, long=3000)
    @given(case=npz_cases)
    def prop(case: NpzCase) -> None:
        folder = tmp_path / str(next(counter))
        folder.mkdir()
        try:
            check_npz_load(folder, case, timeout_for(mode))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    prop()


NPZ_VERBS: dict[str, tuple[list[str], list[str]]] = {
    "evaluate": (["evaluate", "model", "-d", "{data}", "--no-latency"], []),
    "train": (["train", "-m", "lenet5", "-d", "{data}", "-o", "out", "--epochs", "1"], ["out"]),
    "prune": (
        ["prune", "model", "-d", "{data}", "-o", "out", "--importance", "taylor", "--finetune-epochs", "1"],
        ["out"],
    ),
}


def check_npz_cli(assets: Path, case: NpzCase, verb: str, timeout: float) -> Result:
    with workspace(assets) as ws:
        path = case.write(ws)
        argv, outputs = NPZ_VERBS[verb]
        return run_cli(ws, [a.replace("{data}", path.name) for a in argv], outputs, timeout=timeout)


@pytest.mark.parametrize("mode", MODES)
def test_npz_cli(assets: Path, mode: str) -> None:
    """Hostile datasets through evaluate, train and prune (with fine-tuning)."""

    @fuzz_settings(mode, fast=15, long=800)
    @given(case=npz_cases, verb=st.sampled_from(["evaluate", "evaluate", "train", "prune"]))
    def prop(case: NpzCase, verb: str) -> None:
        check_npz_cli(assets, case, verb, timeout_for(mode))

    prop()


# ----------------------------------------------------------------------------------------------------------------------
# Command-line options

FLOAT_WORDS = [
    "nan",
    "-nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e309",
    "-0",
    "0",
    "1e-320",
    "1e308",
    "-1",
    "2",
    "0.5",
    "1",
    "100",
    "abc",
    "",
    "1e3",
    "0x1p-2",
    " 0.5",
]
INT_WORDS = [
    "0",
    "-1",
    "2147483648",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e3",
    "nan",
    "inf",
    "",
    "abc",
    "1.5",
    " 7",
    "+5",
    "-0",
    "0x10",
]
NOT_INTS = ["nan", "inf", "", "abc", "1.5", "-0", "0x10", "--", "-"]
ODD_WORDS = ["", " ", "AUTO", "none", "None", "null", "-", "--force", "x" * 300, "é", "a b", "../x", "0"]

any_float = st.floats(allow_nan=True, allow_infinity=True).map(repr) | st.sampled_from(FLOAT_WORDS)
any_int = st.integers(-3, 300).map(str) | st.sampled_from(INT_WORDS)
# epochs-like counts (larger means slower): mostly 1 or 2, else 0, negative or not a number
small_int = st.sampled_from(["1", "1", "2"]) | st.integers(-3, 0).map(str) | st.sampled_from(NOT_INTS)


def num(*plausible: float) -> st.SearchStrategy[str]:
    """Two times in three a plausible value (so runs get past validation), else any float text."""
    good = st.sampled_from([str(p) for p in plausible])
    return good | good | any_float


def count(*plausible: int) -> st.SearchStrategy[str]:
    """Two times in three a plausible integer, else any integer text (or none)."""
    good = st.sampled_from([str(p) for p in plausible])
    return good | good | any_int


junk = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8)


def choice(*valid: str) -> st.SearchStrategy[str]:
    return st.sampled_from(valid) | st.sampled_from(valid) | st.sampled_from(ODD_WORDS) | junk


MODEL_ARG = st.sampled_from(
    ["model"] * 8
    + [
        "model2",
        "missing",
        "data.npz",
        "notes.txt",
        "alias",
        "dangling",
        ".",
        "",
        "model/spec.json",
        "model/weights.safetensors",
        "x.keras",
        "x.onnx",
    ]
)
DATA_ARG = st.sampled_from(["data.npz"] * 8 + ["digits", "missing.npz", "notes.txt", "model", "", "nope", "data.NPZ"])
OUT_DIR = st.sampled_from(
    ["out"] * 8 + ["sub/dir/out", "model", "notes.txt", "alias", "dangling", ".", "", "data.npz", "out/"]
)
OUT_FILE = st.sampled_from(
    ["out.onnx"] * 6
    + ["out.pt2", "out", "out.txt", "out.ONNX", "sub/out.onnx", "model", "notes.txt", "dangling", ".onnx"]
)
JSON_OUT = st.sampled_from(["report.json"] * 4 + ["sub/r.json", "notes.txt", "model", ".", "", "dangling"])
LAYERS = st.sampled_from(["conv1", "conv2", "fc1", "fc3", "re:fc.*", "re:(", "re:", "nope", "", "relu1"])
KV_KEYS = ["width", "num_classes", "in_channels", "input_size", "depth", "cell", "dropout", "", "x"]
KV_VALUES = [
    "0",
    "-1",
    "0.5",
    "1",
    "2",
    "1e9",
    "1e400",
    "nan",
    "NaN",
    "Infinity",
    "-Infinity",
    "null",
    "true",
    "[1]",
    "{}",
    '"x"',
    "x",
    "",
    "10000000000",
    "0.01",
]
key_values = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KV_KEYS), st.sampled_from(KV_VALUES)),
    st.sampled_from(["width", "=", "width==1", "=1"]),
)
TARGETS = [
    "macs=0.5",
    "params=0.5",
    "bytes=0.5",
    "latency=0.5@64",
    "macs=1.5M",
    "bytes=300KB",
    "latency=2ms@64",
    "macs=0",
    "macs=-1",
    "macs=nan",
    "macs=inf",
    "macs=1e400",
    "macs=2",
    "macs=",
    "=0.5",
    "foo=1",
    "macs=0.5,params=0.5",
    "latency=0.3@0",
    "latency=0.3@-1",
    "latency=0.3@nan",
    "bytes=1e9GB",
    "macs=1e-300",
    "",
    "macs",
    "params=99999999999999999999K",
]
TIME_BUDGETS = ["1s", "2s", "0", "0s", "-1s", "1e400s", "nan", "inf", "abc", "s", "", "1h30m"]


@dataclasses.dataclass(frozen=True)
class Opt:
    flag: str
    values: st.SearchStrategy[str] | None = None  # None: a switch
    required: bool = False  # always given (except now and then, to test the missing-option error)
    repeat: bool = False
    output: bool = False  # its value is an output path


@dataclasses.dataclass(frozen=True)
class Verb:
    positional: tuple[st.SearchStrategy[list[str]], ...]
    options: tuple[Opt, ...]


def _positional(s: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return s.map(lambda v: [v])


OUT = Opt("-o", OUT_DIR, required=True, output=True)
FORCE = Opt("--force")
IMPORTANCE = choice("l1", "l2", "taylor", "bn_scale", "activation", "apoz", "random")
STUDENTS = choice(
    "lenet5",
    "lenet5:width=0.5",
    "seed_cnn:width=0.25",
    "lenet5:width=1e9",
    "lenet5:width=nan",
    "lenet5:",
    "lenet5:width",
    "lenet5:width=0.5,width=2",
    ":",
)
MIN_METRICS = choice("f1=0.9", "accuracy=2", "nope=0.5", "f1=nan", "f1", "=")
RECIPES = st.sampled_from(["auto", "recipe.json", "missing.json", "notes.txt", "data.npz", "model"])
MEMBERS = st.lists(
    st.sampled_from(["model", "model", "model2", "model2", "missing", "data.npz", "x.keras"]), max_size=3
)
VERBS: dict[str, Verb] = {
    "train": Verb(
        (),
        (
            Opt("-m", choice("lenet5", "lenet5", "seed_cnn", "text_lstm", "recsys_mlp"), required=True),
            Opt("-d", DATA_ARG, required=True),
            OUT,
            Opt("--epochs", small_int, required=True),
            Opt("--lr", num(1e-3, 0.01)),
            Opt("--optimizer", choice("adam", "adamw", "sgd")),
            Opt("--batch-size", count(1, 16, 64, 1000)),
            Opt("--patience", count(1, 2)),
            Opt("--seed", count(0, 1, 42)),
            Opt("--no-augment"),
            Opt("--arg", key_values, repeat=True),
            FORCE,
        ),
    ),
    "evaluate": Verb(
        (_positional(MODEL_ARG),),
        (
            Opt("-d", DATA_ARG, required=True),
            Opt("--split", choice("train", "val", "test")),
            Opt("--no-latency"),
            Opt("--runs", small_int),
            Opt("--json", JSON_OUT, output=True),
        ),
    ),
    "export": Verb(
        (_positional(MODEL_ARG),),
        (
            Opt("-o", OUT_FILE, required=True, output=True),
            Opt("-d", DATA_ARG),
            FORCE,
        ),
    ),
    "prune": Verb(
        (_positional(MODEL_ARG),),
        (
            OUT,
            Opt("--ratio", num(0.25, 0.5, 0.9)),
            Opt("--importance", IMPORTANCE),
            Opt("--aggregate", choice("normalized", "sum")),
            Opt("--target-macs", num(0.25, 0.5)),
            Opt("--target-params", num(0.5)),
            Opt("--global"),
            Opt("--round-to", choice("1", "8", "auto") | any_int),
            Opt("--protect", LAYERS, repeat=True),
            Opt("--sparsity", num(0.5, 0.9)),
            Opt("--nm", choice("2:4", "1:1", "0:4", "4:2", "3:0", "2:", "2:4:8", "10:1000000", "a:b")),
            Opt("-d", DATA_ARG),
            Opt("--steps", small_int),
            Opt("--finetune-epochs", small_int),
            Opt("--no-distill"),
            Opt("--lr", num(1e-3, 0.01)),
            FORCE,
        ),
    ),
    "compress": Verb(
        (_positional(MODEL_ARG),),
        (
            Opt("--lowrank", num(0.25, 0.5)),
            Opt("--energy", num(0.9, 0.99)),
            Opt("--cluster", count(2, 16, 256)),
            Opt("--embedding-bits", count(4, 8)),
            Opt("--embedding-keep", num(0.5)),
            Opt("--method", choice("svd", "pca", "pca-factor")),
            Opt("--layer", LAYERS, repeat=True),
            Opt("-d", DATA_ARG),
            Opt("--samples", count(16, 512)),
            Opt("--epochs", small_int),
            Opt("--lr", num(1e-3, 0.01)),
            Opt("-o", OUT_DIR, output=True),
            FORCE,
        ),
    ),
    "simplify": Verb(
        (_positional(MODEL_ARG),),
        (
            OUT,
            Opt("--fold"),
            Opt("--remove", LAYERS, repeat=True),
            Opt("--remove-type", choice("MaxPool2d", "ReLU", "Conv2d", "Linear", "Flatten", "Sequential"), repeat=True),
            Opt("--repair", choice("transfer", "init")),
            Opt("--drop-blocks", num(1, 0.5)),
            Opt("-d", DATA_ARG),
            Opt("--epochs", small_int),
            Opt("--lr", num(1e-3, 0.01)),
            Opt("--seed", count(0, 1, 42)),
            FORCE,
        ),
    ),
    "quantize": Verb(
        (_positional(MODEL_ARG),),
        (
            Opt("-d", DATA_ARG, required=True),
            Opt("-o", OUT_FILE, required=True, output=True),
            Opt("--mode", choice("auto", "static", "dynamic")),
            Opt("--calibration", choice("minmax", "entropy", "percentile")),
            Opt("--samples", count(16, 512)),
            Opt("--max-drop", num(0.5, 1, 5)),
            Opt("--per-channel", choice("on", "off", "auto")),
            Opt("--embeddings", choice("rowwise", "onnx", "auto")),
            FORCE,
        ),
    ),
    "distill": Verb(
        (_positional(MODEL_ARG),),
        (
            Opt("-d", DATA_ARG, required=True),
            OUT,
            Opt("--student", STUDENTS),
            Opt("--width", num(0.5, 0.25)),
            Opt("--depth", count(1, 2)),
            Opt("--temperature", num(4, 1)),
            Opt("--alpha", num(0.5, 0.9)),
            Opt("--feature", choice("fc1=fc1", "conv1=conv2", "x=y", "=", "fc1"), repeat=True),
            Opt("--beta", num(1)),
            Opt("--epochs", small_int, required=True),
            Opt("--lr", num(1e-3, 0.01)),
            Opt("--seed", count(0, 1, 42)),
            FORCE,
        ),
    ),
    "fuse": Verb(
        (MEMBERS,),
        (
            OUT,
            Opt("--method", choice("mean", "vote", "weighted", "select", "stack", "uniform-soup", "greedy-soup")),
            Opt("-d", DATA_ARG),
            Opt("--distill-into", choice("lenet5", "best-member", "seed_cnn", "nope")),
            Opt("--student-arg", key_values, repeat=True),
            Opt("--epochs", small_int, required=True),
            Opt("--temperature", num(4, 1)),
            Opt("--alpha", num(0.5, 0.9)),
            Opt("--lr", num(1e-3, 0.01)),
            Opt("--l2", num(0.01)),
            Opt("--seed", count(0, 1, 42)),
            FORCE,
        ),
    ),
    "train-members": Verb(
        (),
        (
            Opt("-m", choice("lenet5"), required=True),
            Opt("-d", DATA_ARG, required=True),
            OUT,
            Opt("--n", small_int, required=True),
            Opt("--independent"),
            Opt("--start-epochs", small_int, required=True),
            Opt("--epochs", small_int, required=True),
            Opt("--lr", num(1e-3, 0.01)),
            Opt("--finetune-lr", num(5e-4)),
            Opt("--no-augment"),
            Opt("--affine"),
            Opt("--elastic"),
            Opt("--checkpoint", choice("last", "best-val")),
            Opt("--bag", choice("cv", "bootstrap")),
            Opt("--seed", count(0, 1, 42)),
            Opt("--arg", key_values, repeat=True),
            FORCE,
        ),
    ),
    "optimize": Verb(
        (_positional(MODEL_ARG),),
        (
            Opt("-d", DATA_ARG, required=True),
            OUT,
            Opt("-t", st.sampled_from(TARGETS), required=True, repeat=True),
            Opt("--max-drop", num(0.5, 1, 5)),
            Opt("--min-metric", MIN_METRICS, repeat=True),
            Opt("--metric", choice("accuracy", "precision", "recall", "f1")),
            Opt("--recipe", RECIPES),
            Opt("--time-budget", st.sampled_from(TIME_BUDGETS), required=True),
            Opt("--no-quantize"),
            Opt("--quantize"),
            Opt("--finetune-epochs", small_int, required=True),
            Opt("--rounds", small_int),
            Opt("--allocation", choice("sensitivity", "uniform", "global")),
            Opt("--round-to", choice("auto", "1", "8", "0", "-1", "99999999999999999999")),
            Opt("--trials", st.sampled_from(["0", "-1", "x", ""])),
            Opt("--storage", choice("sqlite:///study2.db", "nope://")),
            Opt("--resume"),
            Opt("--seed", count(0, 1, 42)),
            FORCE,
        ),
    ),
    "env": Verb((st.lists(junk | st.sampled_from(["--json", "-v", "--help"]), max_size=2),), ()),
}


@dataclasses.dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    outputs: tuple[str, ...]
    existing: str | None = None  # make the first output exist beforehand: "dir" or "file"


def default_outputs(argv: Sequence[str]) -> list[str]:
    """Outputs a verb writes without being told where (compress: MODEL-compressed beside MODEL)."""
    if argv[0] == "compress" and "-o" not in argv and len(argv) > 1:
        with contextlib.suppress(ValueError):
            model = Path(argv[1])
            return [str(model.with_name(f"{model.stem}-compressed"))]
    return []


@st.composite
def commands(draw: st.DrawFn, verb: str) -> Command:
    spec = VERBS[verb]
    head = [verb]
    for pos in spec.positional:
        head += draw(pos)
    chosen = [o for o in spec.options if o.required and draw(st.integers(0, 24))]
    optional = [o for o in spec.options if not o.required]
    if optional:
        chosen += draw(st.lists(st.sampled_from(optional), max_size=5, unique_by=lambda o: o.flag))
    groups: list[list[str]] = []
    outputs: list[str] = []
    for o in chosen:
        for _ in range(draw(st.integers(1, 2)) if o.repeat else 1):
            if o.values is None:
                groups.append([o.flag])
                continue
            value = draw(o.values)
            groups.append([o.flag, value])
            if o.output:
                outputs.append(value)
    argv = head + [a for g in draw(st.permutations(groups)) for a in g]
    if draw(st.integers(0, 14)) == 0:
        argv.append(draw(st.sampled_from(["--bogus", "stray", "--", "-o", "--help", "-h"])))
    outputs += default_outputs(argv)
    existing = draw(st.sampled_from([None] * 6 + ["dir", "file"]))
    return Command(tuple(argv), tuple(outputs), existing)


def check_command(assets: Path, cmd: Command, timeout: float) -> Result:
    with workspace(assets) as ws:
        if cmd.existing and cmd.outputs:
            first = ws / relative(ws, cmd.outputs[0])
            if not os.path.lexists(first) and first.parent == ws:
                if cmd.existing == "dir":
                    first.mkdir()
                    (first / "keep.txt").write_text("an earlier output\n")
                else:
                    first.write_text("an earlier output\n")
        return run_cli(ws, cmd.argv, cmd.outputs, timeout=timeout)


# fast-mode examples per verb: cheap verbs get more; optimize runs its whole loop when the options are valid
FAST_EXAMPLES = {"optimize": 3, "train-members": 4, "fuse": 4, "quantize": 4, "export": 4, "env": 3}


@pytest.mark.parametrize("verb", sorted(VERBS))
@pytest.mark.parametrize("mode", MODES)
def test_cli_options(assets: Path, mode: str, verb: str) -> None:
    """Random option values (nan, inf, -1, 0, huge, junk words) for every verb."""

    @fuzz_settings(mode, fast=FAST_EXAMPLES.get(verb, 6), long=60 if verb == "optimize" else 300)
    @given(cmd=commands(verb))
    def prop(cmd: Command) -> None:
        check_command(assets, cmd, timeout_for(mode))

    prop()


@pytest.mark.parametrize("mode", MODES)
def test_cli_top_level(assets: Path, mode: str) -> None:
    """Unknown verbs, no verb, --help and stray tokens."""
    tokens = (
        st.sampled_from(
            ["--help", "-h", "--version", "--install-completion", "nope", "", "TRAIN", "evaluate", "env", "--", "-"]
        )
        | junk
    )

    @fuzz_settings(mode, fast=10, long=200)
    @given(argv=st.lists(tokens, max_size=3))
    def prop(argv: list[str]) -> None:
        with workspace(assets) as ws:
            run_cli(ws, argv, timeout=timeout_for(mode))

    prop()


@pytest.mark.slow
def test_time_budget_is_honoured(assets: Path) -> None:
    """--time-budget bounds a run even when one recipe step alone would take hours."""
    recipe = RecipeFile("r.json", {"steps": [{"FineTuneConfig": {"epochs": 1_000_000}}]})
    result = check_recipe_cli(assets, recipe, timeout=90.0)  # the recipe's budget is 3 s
    assert result.usage.seconds < 90


# ----------------------------------------------------------------------------------------------------------------------
# Known hostile inputs: one named example each, cheap, always run (minimal inputs the fuzzers found)


def _spec(*mutations: Mutation, variant: str = "plain", verb: str = "evaluate") -> SpecCase:
    return SpecCase(variant, tuple(mutations), None, verb)


def _set(*where: str | int, value: Any) -> Mutation:
    return Mutation(tuple(where), "set", value)


KNOWN: dict[str, Callable[[Path, float], object]] = {
    # spec.json
    "spec-version-string": lambda a, t: check_spec_case(a, _spec(_set("version", value="2")), t),
    "spec-arch-name-number": lambda a, t: check_spec_case(a, _spec(_set("arch", "name", value=5)), t),
    "spec-kwargs-list": lambda a, t: check_spec_case(a, _spec(_set("arch", "kwargs", value=[1])), t),
    "spec-width-string": lambda a, t: check_spec_case(a, _spec(_set("arch", "kwargs", "width", value="x")), t),
    "spec-width-nan": lambda a, t: check_spec_case(a, _spec(_set("arch", "kwargs", "width", value=float("nan"))), t),
    "spec-width-huge": lambda a, t: check_spec_case(a, _spec(_set("arch", "kwargs", "width", value=10**4)), t),
    "spec-width-100": lambda a, t: check_spec_case(a, _spec(_set("arch", "kwargs", "width", value=100)), t),
    "spec-input-size-float": lambda a, t: check_spec_case(a, _spec(_set("arch", "kwargs", "input_size", value=1e9)), t),
    "spec-tied-list": lambda a, t: check_spec_case(a, _spec(_set("tied", value=[])), t),
    "spec-tied-unhashable": lambda a, t: check_spec_case(a, _spec(_set("tied", "fc1.weight", value=[])), t),
    "spec-encodings-list": lambda a, t: check_spec_case(a, _spec(_set("encodings", value=[1]), variant="sparse"), t),
    "spec-encoding-shape-huge": lambda a, t: check_spec_case(
        a, _spec(_set("encodings", 0, "shape", value=[10**6, 10**6]), variant="sparse"), t
    ),
    "spec-encoding-shape-string": lambda a, t: check_spec_case(
        a, _spec(_set("encodings", 0, "shape", value="ab"), variant="sparse"), t
    ),
    "spec-input-shape-huge": lambda a, t: check_spec_case(
        a, _spec(_set("arch", "input", "shape", value=[10**6, 10**6, 10**6]), verb="export"), t
    ),
    "spec-input-dtype-junk": lambda a, t: check_spec_case(
        a, _spec(_set("arch", "input", "dtype", value="Tensor"), verb="export"), t
    ),
    "spec-changes-dict": lambda a, t: check_spec_case(a, _spec(_set("arch", "changes", value={"a": 1})), t),
    "spec-change-path-number": lambda a, t: check_spec_case(
        a, _spec(_set("arch", "changes", 0, "path", value=5), variant="pruned"), t
    ),
    "spec-change-args-list": lambda a, t: check_spec_case(
        a, _spec(_set("arch", "changes", 0, "module", "args", value=[]), variant="pruned"), t
    ),
    "spec-huge-int": lambda a, t: check_spec_case(a, _spec(_set("history", value=RAW_TOKENS[0])), t),
    "spec-deep-nesting": lambda a, t: check_spec_case(a, SpecCase("plain", (), ("deep", 100_000)), t),
    "spec-not-utf8": lambda a, t: check_spec_case(a, SpecCase("plain", (), ("not-utf8", None)), t),
    "spec-input-shape-empty": lambda a, t: check_spec_case(
        a, _spec(_set("arch", "input", value={"shape": [], "dtype": "float32"}), verb="prune"), t
    ),
    "spec-input-dtype-float16": lambda a, t: check_spec_case(
        a, _spec(_set("arch", "input", "dtype", value="float16"), verb="prune"), t
    ),
    # recipe files
    "recipe-step-fields-scalar": lambda a, t: check_recipe_load(
        _fresh(a), RecipeFile("r.json", {"steps": [{"FineTuneConfig": 3}]}), t
    ),
    "recipe-not-utf8": lambda a, t: check_recipe_load(_fresh(a), RecipeFile("r.json", raw=b"\xff\xfe{"), t),
    "recipe-deep-json": lambda a, t: check_recipe_load(_fresh(a), RecipeFile("r.json", raw=b"[" * 100_000), t),
    "recipe-yaml-deep": lambda a, t: check_recipe_load(
        _fresh(a), RecipeFile("r.yaml", raw=HOSTILE_YAML[-1].encode()), t
    ),
    "recipe-huge-int": lambda a, t: check_recipe_load(
        _fresh(a), RecipeFile("r.json", raw=b'{"steps": [{"FineTuneConfig": {"epochs": 1' + b"0" * 5000 + b"}}]}"), t
    ),
    # .npz datasets
    "npz-60-samples-10-classes": lambda a, t: check_npz_load(
        _fresh(a), NpzCase(arrays=(("x", Arr((60, 1, 28, 28))), ("y", Arr((60,), "int64", "labels", 10)))), t
    ),
    "npz-labels-uint64": lambda a, t: check_npz_load(
        _fresh(a), NpzCase(arrays=(("x", Arr((40, 4))), ("y", Arr((40,), "uint64", "labels", 2)))), t
    ),
    "npz-label-1e9": lambda a, t: check_npz_load(
        _fresh(a), NpzCase(arrays=(("x", Arr((40, 4))), ("y", Arr((40,), "int64", "labels", 2, ((0, 10**9),))))), t
    ),
    "npz-x-strings": lambda a, t: check_npz_load(
        _fresh(a), NpzCase(arrays=(("x", Arr((40, 4), "<U3")), ("y", Arr((40,), "int64", "labels", 2)))), t
    ),
    "npz-x-datetime": lambda a, t: check_npz_load(
        _fresh(a), NpzCase(arrays=(("x", Arr((40, 4), "datetime64[s]")), ("y", Arr((40,), "int64", "labels", 2)))), t
    ),
    "npz-x-uint64": lambda a, t: check_npz_load(
        _fresh(a), NpzCase(arrays=(("x", Arr((40, 4), "uint64")), ("y", Arr((40,), "int64", "labels", 2)))), t
    ),
    "npz-x-0d": lambda a, t: check_npz_load(_fresh(a), NpzCase(arrays=(("x", Arr(())), ("y", Arr((1,), "int64")))), t),
    "npz-empty": lambda a, t: check_npz_load(
        _fresh(a), NpzCase(arrays=(("x", Arr((0, 4))), ("y", Arr((0,), "int64")))), t
    ),
    "npz-header-huge": lambda a, t: check_npz_load(_fresh(a), NpzCase(header=(10**12,)), t),
    "npz-one-sample": lambda a, t: check_npz_load(
        _fresh(a), NpzCase(arrays=(("x", Arr((1, 4))), ("y", Arr((1,), "int64", "zeros")))), t
    ),
    "npz-flat-images-train": lambda a, t: check_npz_cli(
        a, NpzCase(arrays=(("x", Arr((40, 784))), ("y", Arr((40,), "int64", "labels", 2)))), "train", t
    ),
    "npz-fewer-classes-than-model": lambda a, t: check_npz_cli(
        a, NpzCase(arrays=(("x", Arr((40, 1, 28, 28))), ("y", Arr((40,), "int64", "labels", 2)))), "evaluate", t
    ),
    # options
    "quantize-percentile": lambda a, t: check_command(
        a,
        Command(
            ("quantize", "model", "-d", "data.npz", "--calibration", "percentile", "-o", "out.onnx"), ("out.onnx",)
        ),
        t,
    ),
    "distill-data-shape-mismatch": lambda a, t: check_command(
        a, Command(("distill", "model", "-d", "digits", "-o", "out", "--epochs", "1"), ("out",)), t
    ),
    "compress-data-shape-mismatch": lambda a, t: check_command(
        a, Command(("compress", "model", "-d", "digits", "--energy", "0.9", "-o", "out"), ("out",)), t
    ),
    "fuse-data-shape-mismatch": lambda a, t: check_command(
        a, Command(("fuse", "model", "model2", "-d", "digits", "-o", "out", "--epochs", "1"), ("out",)), t
    ),
    "train-recsys-on-images": lambda a, t: check_command(
        a, Command(("train", "-m", "recsys_mlp", "-d", "data.npz", "-o", "out", "--epochs", "1"), ("out",)), t
    ),
    "train-text-on-images": lambda a, t: check_command(
        a, Command(("train", "-m", "text_lstm", "-d", "data.npz", "-o", "out", "--epochs", "1"), ("out",)), t
    ),
    "train-seed-huge": lambda a, t: check_command(
        a,
        Command(
            ("train", "-m", "lenet5", "-d", "data.npz", "-o", "out", "--epochs", "1", "--seed", "18446744073709551616"),
            ("out",),
        ),
        t,
    ),
    "train-batch-size-0": lambda a, t: check_command(
        a,
        Command(
            ("train", "-m", "lenet5", "-d", "data.npz", "-o", "out", "--epochs", "1", "--batch-size", "0"), ("out",)
        ),
        t,
    ),
    "train-epochs-0": lambda a, t: check_command(
        a, Command(("train", "-m", "lenet5", "-d", "data.npz", "-o", "out", "--epochs", "0"), ("out",)), t
    ),
    "train-lr-nan": lambda a, t: check_command(
        a,
        Command(("train", "-m", "lenet5", "-d", "data.npz", "-o", "out", "--epochs", "1", "--lr", "nan"), ("out",)),
        t,
    ),
    "train-width-huge": lambda a, t: check_command(
        a,
        Command(
            ("train", "-m", "lenet5", "-d", "data.npz", "-o", "out", "--epochs", "1", "--arg", "width=1e9"), ("out",)
        ),
        t,
    ),
    "train-width-nan": lambda a, t: check_command(
        a,
        Command(
            ("train", "-m", "lenet5", "-d", "data.npz", "-o", "out", "--epochs", "1", "--arg", "width=NaN"), ("out",)
        ),
        t,
    ),
    "evaluate-runs-0": lambda a, t: check_command(
        a, Command(("evaluate", "model", "-d", "data.npz", "--runs", "0"), ()), t
    ),
    "evaluate-json-dir": lambda a, t: check_command(
        a, Command(("evaluate", "model", "-d", "data.npz", "--no-latency", "--json", "model"), ("model",)), t
    ),
    "prune-ratio-nan": lambda a, t: check_command(
        a, Command(("prune", "model", "-o", "out", "--ratio", "nan"), ("out",)), t
    ),
    "prune-ratio-1": lambda a, t: check_command(
        a, Command(("prune", "model", "-o", "out", "--ratio", "1"), ("out",)), t
    ),
    "prune-nm-0-4": lambda a, t: check_command(a, Command(("prune", "model", "-o", "out", "--nm", "0:4"), ("out",)), t),
    "prune-round-to-huge": lambda a, t: check_command(
        a, Command(("prune", "model", "-o", "out", "--round-to", "99999999999999999999"), ("out",)), t
    ),
    "prune-steps-0": lambda a, t: check_command(
        a, Command(("prune", "model", "-o", "out", "--steps", "0"), ("out",)), t
    ),
    "prune-regex-bad": lambda a, t: check_command(
        a, Command(("prune", "model", "-o", "out", "--protect", "re:("), ("out",)), t
    ),
    "compress-cluster-huge": lambda a, t: check_command(
        a, Command(("compress", "model", "--cluster", "9223372036854775808", "-o", "out"), ("out",)), t
    ),
    "compress-lowrank-nan": lambda a, t: check_command(
        a, Command(("compress", "model", "--lowrank", "nan", "-o", "out"), ("out",)), t
    ),
    "compress-default-output-dot": lambda a, t: check_command(a, Command(("compress", ".", "--lowrank", "0.5"), ()), t),
    "export-output-is-input": lambda a, t: check_command(
        a, Command(("export", "model", "-o", "model", "--force"), ("model",)), t
    ),
    "export-output-symlink-to-input": lambda a, t: check_command(
        a, Command(("export", "model", "-o", "alias", "--force"), ("alias",)), t
    ),
    "simplify-remove-all": lambda a, t: check_command(
        a, Command(("simplify", "model", "-o", "out", "--remove", "re:.*"), ("out",)), t
    ),
    "distill-width-huge": lambda a, t: check_command(
        a, Command(("distill", "model", "-d", "data.npz", "-o", "out", "--epochs", "1", "--width", "1e9"), ("out",)), t
    ),
    "distill-temperature-0": lambda a, t: check_command(
        a,
        Command(("distill", "model", "-d", "data.npz", "-o", "out", "--epochs", "1", "--temperature", "0"), ("out",)),
        t,
    ),
    "fuse-one-member": lambda a, t: check_command(a, Command(("fuse", "model", "-o", "out"), ("out",)), t),
    "train-members-n-0": lambda a, t: check_command(
        a,
        Command(
            (
                "train-members",
                "-m",
                "lenet5",
                "-d",
                "data.npz",
                "-o",
                "out",
                "--n",
                "0",
                "--start-epochs",
                "1",
                "--epochs",
                "1",
            ),
            ("out",),
        ),
        t,
    ),
    "optimize-bad-recipe-leaves-nothing": lambda a, t: check_recipe_cli(
        a, RecipeFile("r.json", {"steps": [{"FineTuneConfig": {"epochs": 0}}]}), t
    ),
    "optimize-target-1e400": lambda a, t: check_command(
        a,
        Command(
            ("optimize", "model", "-d", "data.npz", "-o", "out", "-t", "macs=1e400", "--time-budget", "1s"), ("out",)
        ),
        t,
    ),
    "optimize-time-budget-0": lambda a, t: check_command(
        a,
        Command(("optimize", "model", "-d", "data.npz", "-o", "out", "-t", "macs=0.5", "--time-budget", "0"), ("out",)),
        t,
    ),
}


def _fresh(assets: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix="known-", dir=assets.parent))


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_hostile_inputs(assets: Path, name: str) -> None:
    """The minimal failing inputs found by the fuzzers, by name (regressions once fixed)."""
    KNOWN[name](assets, TIMEOUT["fast"])


# ----------------------------------------------------------------------------------------------------------------------
# Memory of the real entry point, in a subprocess


def run_subprocess(
    ws: Path, argv: Sequence[str], *, ceiling: int = 8 << 30, timeout: float = 300
) -> tuple[int, str, int]:
    """``python -m slimkit *argv`` in ``ws`` under an address-space ceiling: (exit code, stderr, peak RSS bytes)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))

    env = {**os.environ, "COLUMNS": "200"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "slimkit", *argv], cwd=ws, stdout=out, stderr=err, env=env, preexec_fn=limit
        )
        deadline = time.monotonic() + timeout
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, rusage = os.wait4(proc.pid, 0)
                proc.returncode = -9
                raise TimeoutViolation(f"slimkit {shlex.join(argv)}: still running after {timeout:.0f} s")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, err.read().decode(errors="replace"), rusage.ru_maxrss * 1024


MEMORY_CASES: dict[str, tuple[str, Callable[[Path], None], list[str]]] = {
    # name -> (mode, prepare the workspace, argv)
    "spec-width-100": (
        "fast",
        lambda ws: _mutate_spec(ws, _set("arch", "kwargs", "width", value=100)),
        ["evaluate", "model", "-d", "data.npz", "--no-latency"],
    ),
    "npz-header-1e12": (
        "long",
        lambda ws: NpzCase(name="big.npz", header=(10**12,)).write(ws),
        ["evaluate", "model", "-d", "big.npz", "--no-latency"],
    ),
    "spec-num-classes-1e8": (
        "long",
        lambda ws: _mutate_spec(ws, _set("arch", "kwargs", "num_classes", value=10**8)),
        ["evaluate", "model", "-d", "data.npz", "--no-latency"],
    ),
    "spec-encoding-shape-1e5": (
        "long",
        lambda ws: _mutate_spec(ws, _set("encodings", 0, "shape", value=[10**5, 10**5])),
        ["evaluate", "model", "-d", "data.npz"],
    ),
    "npz-label-1e9": (
        "long",
        lambda ws: NpzCase(
            name="labels.npz",
            arrays=(("x", Arr((40, 1, 28, 28))), ("y", Arr((40,), "int64", "labels", 2, ((0, 10**9),)))),
        ).write(ws),
        ["evaluate", "model", "-d", "labels.npz", "--no-latency"],
    ),
}


def _mutate_spec(ws: Path, *mutations: Mutation) -> None:
    spec = ws / "model" / "spec.json"
    doc = json.loads(spec.read_text())
    for m in mutations:
        doc = apply_mutation(doc, m)
    spec.write_text(dump(doc))


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[pytest.mark.slow] if MEMORY_CASES[n][0] == "long" else []) for n in MEMORY_CASES],
)
def test_memory_subprocess(assets: Path, name: str) -> None:
    """The real entry point on inputs that ask for absurd memory: exit 0 or 2, no traceback, bounded peak RSS."""
    _, prepare, argv = MEMORY_CASES[name]
    variant = "sparse" if "encoding" in name else "plain"
    with workspace(assets, variant) as ws:
        prepare(ws)
        code, err, peak = run_subprocess(ws, argv)
    shown = f"slimkit {shlex.join(argv)} ({name})"
    if code not in (0, 2):
        raise ExitCodeViolation(f"{shown}: exit code {code}; peak RSS {peak / 2**20:.0f} MiB\n{err[-3000:]}")
    if "Traceback" in err:
        raise TracebackViolation(f"{shown}: printed a traceback\n{err[-3000:]}")
    if peak > MEMORY_BUDGET + (600 << 20):  # a bare `python -m slimkit` evaluate peaks at ~0.5 GiB
        raise MemoryViolation(f"{shown}: peak RSS {peak / 2**20:.0f} MiB")
