"""Issue 17: outputs never lost or overwritten, runs bound to their inputs, every bad option one line + exit 2.

Each test names the audit problem it covers; each failed on the code before the fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import slimkit as sk
from slimkit.core.errors import SlimkitError

QUICK = ["--finetune-epochs", "1", "--rounds", "1", "--no-quantize", "--max-drop", "50"]


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two small trained digit classifiers that differ only in their weights."""
    root = tmp_path_factory.mktemp("ckpts")
    data = sk.data.load("digits")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = sk.zoo.create_for("resnet_cifar", data, depth=8, width=0.25)
        sk.train.fit(model, data.train, epochs=1, lr=3e-3, progress=False, seed=seed)
        paths.append(sk.save(model, root / f"ckpt{seed}", example=data.example))
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def finished_run(ckpts: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete ``slimkit optimize`` run folder of ckpt0."""
    import sys

    from slimkit.cli import main

    out = tmp_path_factory.mktemp("runs") / "run"
    argv = sys.argv
    sys.argv = ["slimkit", "optimize", str(ckpts[0]), "-d", "digits", "-t", "macs=0.5", *QUICK, "-o", str(out)]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = argv
    assert exc.value.code in (0, None)
    return out


# ---- 3, 14: outputs never overwrite without --force, never an input --------------------------------------


def test_evaluate_json_needs_force_and_never_replaces_the_input(cli, ckpts: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: ANN001
    ckpt = ckpts[0]
    before = _tree(ckpt)
    existing = tmp_path / "eval.json"
    existing.write_text("keep me")
    code, _, err = cli("evaluate", ckpt, "-d", "digits", "--no-latency", "--json", existing)
    assert code == 2 and "already exists" in err and "--force" in err and existing.read_text() == "keep me"
    for target in (ckpt / "weights.safetensors", ckpt):  # problem 3: a checkpoint's own file; 14: the input
        code, _, err = cli("evaluate", ckpt, "-d", "digits", "--no-latency", "--json", target, "--force")
        assert code == 2 and "would replace the input" in err
    assert _tree(ckpt) == before
    code, _, err = cli("evaluate", ckpt, "-d", "digits", "--no-latency", "--json", existing, "--force")
    assert code == 0, err
    assert json.loads(existing.read_text())["split"] == "test"


@pytest.mark.parametrize("verb", ["prune", "simplify", "optimize"])
def test_output_equal_to_or_holding_the_input_is_refused_even_with_force(
    cli,  # noqa: ANN001
    verb: str,
    ckpts: tuple[Path, Path],
    finished_run: Path,
) -> None:
    args = {
        "prune": ["--ratio", "0.5"],
        "simplify": ["--fold"],
        "optimize": ["-d", "digits", "-t", "macs=0.5", *QUICK],
    }[verb]
    before = _tree(ckpts[0].parent)
    code, _, err = cli(verb, ckpts[0], *args, "-o", ckpts[0], "--force")  # problem 14
    assert code == 2 and "would replace the input" in err
    code, _, err = cli(verb, ckpts[0], *args, "-o", ckpts[0].parent, "--force")  # a folder holding the input
    assert code == 2 and "would replace the input" in err
    assert _tree(ckpts[0].parent) == before
    run = _tree(finished_run)
    code, _, err = cli(verb, finished_run / "checkpoint", *args, "-o", finished_run, "--force")
    assert code == 2 and "would replace the input" in err and _tree(finished_run) == run


def test_output_that_is_a_symlink_is_refused(cli, ckpts: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: ANN001
    link = tmp_path / "link"
    link.symlink_to(ckpts[0], target_is_directory=True)
    before = _tree(ckpts[0])
    code, _, err = cli("train", "-m", "resnet_cifar", "-d", "digits", "-o", link, "--epochs", "1", "--force")
    assert code == 2 and "symbolic link" in err and "Traceback" not in err  # problem 8
    assert link.is_symlink() and _tree(ckpts[0]) == before


# ---- 4, 5, 10: run folders ----------------------------------------------------------------------------


def test_force_keeps_the_old_run_until_the_new_one_succeeds(
    cli,  # noqa: ANN001
    ckpts: tuple[Path, Path],
    finished_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = _tree(finished_run)
    assert {"report.json", "report.html", "model.onnx", "recipe.json", "run.json"} <= set(before)
    (tmp_path / "bad.json").write_text('{"steps": [{"NoSuchConfig": {}}]}')
    code, _, err = cli(
        "optimize",
        ckpts[1],
        "-d",
        "digits",
        "-t",
        "macs=0.5",
        "--recipe",
        tmp_path / "bad.json",
        "-o",
        finished_run,
        "--force",
    )
    assert code == 2 and "NoSuchConfig" in err
    assert _tree(finished_run) == before  # problem 4: a bad recipe no longer deletes the old outputs

    import slimkit.optimize.run as run_mod

    def boom(*args: object, **kwargs: object) -> None:
        raise SlimkitError("simulated failure while saving")

    monkeypatch.setattr(run_mod.OptimizeResult, "save", boom)  # fails after all the work, while writing
    code, _, err = cli("optimize", ckpts[1], "-d", "digits", "-t", "macs=0.5", *QUICK, "-o", finished_run, "--force")
    assert code == 2 and "simulated failure" in err
    assert _tree(finished_run) == before
    assert sorted(p.name for p in finished_run.parent.iterdir()) == [finished_run.name]  # no staging left behind


def test_force_replaces_a_run_only_when_the_new_one_is_complete(
    cli,  # noqa: ANN001
    ckpts: tuple[Path, Path],
    finished_run: Path,
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    import shutil

    shutil.copytree(finished_run, run)
    (run / "stale.txt").write_text("from an older run")
    code, out, err = cli("optimize", ckpts[1], "-d", "digits", "-t", "macs=0.5", *QUICK, "-o", run, "--force")
    assert code == 0, err
    assert not (run / "stale.txt").exists() and (run / "report.json").is_file()
    assert json.loads((run / "run.json").read_text()) != json.loads((finished_run / "run.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_resume_is_bound_to_its_run(cli, ckpts: tuple[Path, Path], finished_run: Path) -> None:  # noqa: ANN001
    before = _tree(finished_run)
    base = ["-d", "digits", "-t", "macs=0.5", *QUICK, "-o", finished_run, "--resume"]
    code, _, err = cli("optimize", ckpts[1], *base)  # problem 5: another input model
    assert code == 2 and "input model" in err
    code, _, err = cli("optimize", ckpts[0], *base, "--seed", "3")  # another setting: named with both values
    assert code == 2 and "seed (0, now 3)" in err
    code, _, err = cli("optimize", ckpts[0], *base[:-3], "-o", ckpts[1], "--resume")  # not a run folder
    assert code == 2 and "not a slimkit optimize run folder" in err
    assert _tree(finished_run) == before
    code, _, err = cli("optimize", ckpts[0], *base)  # the same run: allowed
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--allocation", "bogus"], "unknown allocation"),
        (["--rounds", "0"], "--rounds must be >= 1"),
        (["--finetune-epochs", "-1"], "--finetune-epochs must be >= 1"),
        (["--max-drop", "nan"], "--max-drop must be a finite number"),  # problem 11: nan passed every check
        (["--trials", "-2"], "--trials must be >= 0"),
    ],
)
def test_failed_optimize_leaves_no_run_folder(
    cli,  # noqa: ANN001
    ckpts: tuple[Path, Path],
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    code, _, err = cli("optimize", ckpts[0], "-d", "digits", "-t", "macs=0.5", *args, "-o", tmp_path / "run")
    assert code == 2 and message in err, err
    assert not (tmp_path / "run").exists()  # problem 10


def test_a_bare_target_above_one_asks_share_or_absolute(cli, ckpts: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: ANN001
    code, _, err = cli("optimize", ckpts[0], "-d", "digits", "-t", "macs=2", "-o", tmp_path / "run")
    assert code == 2 and "macs=2 is ambiguous" in err and "2%" in err and "0.02" in err
    assert not (tmp_path / "run").exists()
    t = sk.optimize.parse_target("macs=25%,params=1500,latency=3ms")
    assert (t.macs, t.max_params, t.max_latency_ms) == (0.25, 1500, 3.0)
    with pytest.raises(SlimkitError, match="latency=2ms"):
        sk.optimize.parse_target("latency=2")
    with pytest.raises(SlimkitError, match="finite"):
        sk.Target(macs=0.5, max_drop=float("nan"))


# ---- 8, 11, 12: every option checked once, one line, exit 2 ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "-m", "resnet_cifar", "-d", "digits", "--lr", "nan"], "--lr must be a finite number"),
        (["train", "-m", "resnet_cifar", "-d", "digits", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["train", "-m", "resnet_cifar", "-d", "digits", "--patience", "-1"], "--patience must be >= 1"),
        (["train", "-m", "resnet_cifar", "-d", "digits", "--lr", "inf"], "--lr must be a finite number"),
        (["evaluate", "CKPT", "-d", "digits", "--runs", "0"], "--runs must be >= 1"),
        (["prune", "CKPT", "--steps", "0"], "--steps must be >= 1"),
        (["prune", "CKPT", "--ratio", "1.5"], "--ratio must be >= 0 and < 1"),
        (["prune", "CKPT", "--protect", "re:["], "invalid regular expression"),
        (["distill", "CKPT", "-d", "digits", "--alpha", "2"], "--alpha must be in [0, 1]"),
        (["distill", "CKPT", "-d", "digits", "--temperature", "0"], "--temperature must be > 0"),
        (["quantize", "CKPT", "-d", "digits"], "name the output *.onnx"),
        (["compress", "CKPT", "--cluster", "1"], "--cluster must be in [2, 256]"),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(
    cli,  # noqa: ANN001
    ckpts: tuple[Path, Path],
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    args = [str(ckpts[0]) if a == "CKPT" else a for a in args]
    out = tmp_path / ("q.txt" if args[0] == "quantize" else "out")
    code, stdout, err = cli(*args, "--json" if args[0] == "evaluate" else "-o", out)
    assert code == 2, (stdout, err)
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("error:")
    assert not out.exists()


def test_training_messages_name_the_real_cause(digits: sk.data.Dataset) -> None:
    model = sk.zoo.create_for("resnet_cifar", digits, depth=8, width=0.25)
    x, y = digits.splits["train"]
    bad = x.clone()
    bad[3, 0, 2, 2] = float("nan")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(bad, y), batch_size=64)
    with pytest.raises(SlimkitError, match="inputs contain NaN"):  # problem 12: said "lower the learning rate"
        sk.train.fit(model, loader, epochs=1, progress=False)
    with pytest.raises(SlimkitError, match="temperature must be"):
        sk.train.fit(model, digits.train, epochs=1, teacher=model, distill=sk.train.DistillConfig(temperature=0.0))
    with torch.no_grad():
        next(model.parameters())[0] = float("inf")
    with pytest.raises(SlimkitError, match="holds NaN or infinite values before training"):
        sk.train.fit(model, digits.train, epochs=1, progress=False)


def test_an_unexpected_error_is_one_line_and_not_a_user_error(cli, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import slimkit.cli.env as env

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(env.platform, "python_version", broken)
    code, _, err = cli("env")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "internal error (RuntimeError: something)" in err and "SLIMKIT_DEBUG" in err


# ---- 13: workers sharing an Optuna study -------------------------------------------------------------------


def test_workers_sharing_a_storage_join_without_resume_and_sample_differently(
    cli,  # noqa: ANN001
    ckpts: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    optuna = pytest.importorskip("optuna")
    recipe = tmp_path / "r.json"
    recipe.write_text(
        json.dumps({"steps": [{"ChannelPruneConfig": {"ratio": 0.25}}, {"FineTuneConfig": {"epochs": 1}}]})
    )
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    base = ["optimize", ckpts[0], "-d", "digits", "-t", "macs=0.9", "--recipe", recipe, "--storage", url]
    code, _, err = cli(*base, "--trials", "1", "-o", tmp_path / "worker1")
    assert code == 0, err
    code, out, err = cli(*base, "--trials", "2", "-o", tmp_path / "worker2")  # joins: no --resume, a new folder
    assert code == 0, err
    assert "joining the study" in out
    trials = optuna.load_study(study_name="slimkit-optimize", storage=url).trials
    assert len(trials) == 2
    assert trials[0].params != trials[1].params  # same --seed, own sampler seeds: not the same trial twice


def test_storage_creation_is_retried_when_workers_race(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    import optuna.storages

    from slimkit.optimize import search

    real, calls = optuna.storages.RDBStorage, []

    def racing(url: str, **kwargs: object) -> object:
        calls.append(url)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) table studies already exists")
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(search.time, "sleep", lambda s: None)
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert search._storage(url) is not None and len(calls) == 3
    calls.clear()
    with pytest.raises(SlimkitError, match="cannot open the Optuna storage"):
        search._storage(url, attempts=2)  # still racing after the last attempt: one line, not a traceback


# ---- recipe files: read safely, every mistake named -----------------------------------------------------


def test_hostile_recipe_files_are_one_line_errors(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    from slimkit.optimize import Recipe

    levels = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    cases = {
        "bomb.yaml": (levels + "steps: *i\n", "aliases"),  # a billion laughs: 9^9 strings from 1 KB
        "deep.json": ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        "deep.yaml": ("[" * 100_000 + "]" * 100_000, "not valid YAML"),
        "fields.json": (json.dumps({"steps": [{"FineTuneConfig": [1, 2]}]}), "must be a mapping"),
        "type.json": (json.dumps({"steps": [{"FineTuneConfig": {"epochs": "abc"}}]}), "epochs must be an integer"),
        "ratios.json": (
            json.dumps({"steps": [{"SensitivityPruneConfig": {"target_macs": 0.5, "probe_ratios": ["a"]}}]}),
            "probe_ratios must be",
        ),
        "binary.json": (b"\xff\xfe\x00garbage", "not a text file"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(SlimkitError, match=message):
            Recipe.load(path)


def test_an_unwritable_output_is_refused_before_any_work(cli, ckpts: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: ANN001
    if not Path("/proc/self").exists():
        pytest.skip("needs Linux /proc (a folder nobody can create files in, root included)")
    code, out, err = cli("train", "-m", "resnet_cifar", "-d", "digits", "-o", "/proc/slimkit-run", "--epochs", "1")
    assert code == 2 and "cannot write /proc/slimkit-run" in err and "epoch" not in out + err  # nothing trained
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli("evaluate", ckpts[0], "-d", "digits", "--json", blocker / "eval.json")
    assert code == 2 and "is not a folder" in err and blocker.read_text() == "x"


def test_fusing_the_same_member_twice_and_a_bad_storage_url_are_named(
    cli,  # noqa: ANN001
    ckpts: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    code, _, err = cli(
        "fuse", ckpts[0], ckpts[0].parent / ".." / ckpts[0].parent.name / ckpts[0].name, "-o", tmp_path / "f"
    )
    assert code == 2 and "more than once" in err and not (tmp_path / "f").exists()
    pytest.importorskip("optuna")
    code, _, err = cli(
        "optimize",
        ckpts[0],
        "-d",
        "digits",
        "-t",
        "macs=0.5",
        "--trials",
        "1",
        "--storage",
        "nosuchdb://x",
        "-o",
        tmp_path / "run",
    )
    assert code == 2 and "cannot open the Optuna storage" in err and not (tmp_path / "run").exists()


def test_force_replaces_a_file_by_a_folder_and_a_folder_by_a_file(tmp_path: Path) -> None:
    from slimkit.core.files import atomic_path

    out = tmp_path / "out"
    out.write_text("a file")
    with atomic_path(out, force=True) as tmp:
        tmp.mkdir()
        (tmp / "x").write_text("in a folder")
    assert (out / "x").read_text() == "in a folder"
    with atomic_path(out, force=True) as tmp:
        tmp.write_text("a file again")
    assert out.read_text() == "a file again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
