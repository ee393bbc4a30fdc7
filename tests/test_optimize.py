"""The closed loop (slimkit.optimize): targets, recipes, sensitivity allocation, pipeline, report, search."""

from __future__ import annotations

import copy
import html.parser
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import slimkit as sk
from slimkit.core.errors import MissingExtraError, ModelFileError, SlimkitError
from slimkit.core.transform import records
from slimkit.evaluate import count_macs, count_params
from slimkit.io.onnx import runtimes
from slimkit.optimize import (
    CostModel,
    FineTuneConfig,
    Recipe,
    Sensitivity,
    SensitivityPruneConfig,
    Target,
    allocate,
    measure_sensitivity,
    optimize,
    parse_duration,
    parse_target,
    uniform,
)
from slimkit.prune import ChannelPruneConfig, prune_channels

# ---- targets -------------------------------------------------------------------------------


def test_parse_target_shares_absolutes_and_latency_batch() -> None:
    t = parse_target(["macs=0.25,params=0.2", "latency=0.3@32"], max_drop=0.5, time_budget="20m")
    assert (t.macs, t.params, t.latency, t.latency_batch, t.max_drop, t.time_budget) == (0.25, 0.2, 0.3, 32, 0.5, 1200)
    t = parse_target("macs=1.5M,bytes=300KB,latency=2ms")
    assert (t.max_macs, t.max_bytes, t.max_latency_ms, t.latency_batch) == (1_500_000, 300 * 1024, 2.0, 64)
    assert t.limits({"macs": 6e6, "bytes": 1e6, "latency": 10.0}) == {"macs": 1.5e6, "bytes": 307200.0, "latency": 2.0}
    assert sk.Target is Target


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("macs", "name=value"),
        ("flops=0.5", "unknown target 'flops'"),
        ("macs=abc", "cannot read macs"),
        ("macs=0", "must be positive"),
        ("macs=0.2,macs=0.3", "given twice"),
        ("latency=0.3@x", "batch size must be a positive integer"),
        ("bytes=3 parsecs", "cannot read bytes"),
    ],
)
def test_bad_target_strings_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(SlimkitError, match=message):
        parse_target(text)


def test_target_checks() -> None:
    with pytest.raises(SlimkitError, match="names no cost"):
        Target(max_drop=0.5)
    with pytest.raises(SlimkitError, match=r"share of the original in \(0, 1\]"):
        Target(macs=4.0)
    with pytest.raises(SlimkitError, match="does not know whether a higher 'bleu' is better"):
        Target(macs=0.5, metric="bleu").for_task("accuracy")
    assert Target(macs=0.5, metric="bleu").for_task("accuracy", higher_is_better=True).higher_is_better
    with pytest.raises(SlimkitError, match="fraction"):
        Target(macs=0.5, min_metrics={"f1": 97})
    t = Target(macs=0.5, max_drop=1.0, min_metrics={"f1": 0.9})
    base = {"accuracy": 0.95, "f1": 0.95}
    assert t.quality_ok({"accuracy": 0.941, "f1": 0.94}, base)
    assert not t.quality_ok({"accuracy": 0.93, "f1": 0.94}, base)  # 2 points lost
    assert not t.quality_ok({"accuracy": 0.95, "f1": 0.89}, base)  # f1 floor
    assert t.cost_ok({"macs": 50}, {"macs": 100}) == {"macs": True}
    assert t.cost_ok({"macs": 51}, {"macs": 100}) == {"macs": False}
    assert Target.from_dict(t.to_dict()) == t


def test_parse_duration() -> None:
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration("2.5m") == 150
    for bad in ("soon", "10 parsecs", "0s"):
        with pytest.raises(SlimkitError):
            parse_duration(bad)


# ---- recipes -------------------------------------------------------------------------------


def test_recipe_files_round_trip_and_errors(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "steps:\n  - SensitivityPruneConfig: {target_macs: 0.3, rounds: 2}\n  - FineTuneConfig: {epochs: 2}\n"
        "  - type: FoldConfig\n  - QuantizeConfig: {mode: static}\n"
    )
    r = Recipe.load(tmp_path / "r.yaml")
    assert str(r) == "SensitivityPrune -> FineTune -> Fold -> Quantize" and r.quantizes
    (tmp_path / "r.json").write_text(json.dumps(r.to_dict()))
    assert Recipe.load(tmp_path / "r.json") == r
    with pytest.raises(SlimkitError, match="must be the last"):
        Recipe.from_dict({"steps": [{"type": "QuantizeConfig"}, {"type": "FoldConfig"}]})
    with pytest.raises(SlimkitError, match="step 1.*no field"):
        Recipe.from_dict({"steps": [{"FineTuneConfig": {"epoch": 3}}]})
    with pytest.raises(SlimkitError, match="cannot be a step"):
        Recipe.from_dict({"steps": [{"type": "MagnitudePruneConfig"}]})
    with pytest.raises(SlimkitError, match="needs target_macs"):
        SensitivityPruneConfig()
    with pytest.raises(SlimkitError, match="no such recipe file"):
        Recipe.load(tmp_path / "missing.yaml")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SlimkitError, match="not valid JSON"):
        Recipe.load(tmp_path / "bad.json")


# ---- cost model, sensitivity, allocation ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"), [("seed_cnn", {}, (1, 1, 28, 28)), ("resnet_cifar", {"depth": 8}, (1, 3, 32, 32))]
)
def test_cost_model_matches_real_pruning(name: str, kwargs: dict, shape: tuple) -> None:
    torch.manual_seed(0)
    model = sk.zoo.create(name, **kwargs)
    x = torch.rand(*shape)
    costs = CostModel(model, x)
    ratios = {p: 0.25 + 0.5 * (i % 2) for i, p in enumerate(costs.groups)}
    est = costs.estimate(ratios)
    pruned = copy.deepcopy(model)
    prune_channels(pruned, ChannelPruneConfig(ratio=0.0, ratios=ratios), x)
    assert est["macs"] == pytest.approx(count_macs(pruned, x), rel=0.02)
    assert est["params"] == pytest.approx(count_params(pruned), rel=0.02)


@pytest.fixture(scope="module")
def small_cnn(mini: sk.data.Dataset) -> torch.nn.Module:
    torch.manual_seed(0)
    model = sk.zoo.create_for("seed_cnn", mini, width=0.25)
    sk.train.fit(model, mini.train, epochs=3, lr=2e-3, progress=False)
    return model


def test_sensitivity_allocation_meets_budget_and_beats_uniform(
    small_cnn: torch.nn.Module, mini: sk.data.Dataset
) -> None:
    sens = measure_sensitivity(small_cnn, mini, probe_ratios=(0.5, 0.9))
    assert set(sens.groups) == {"conv1", "conv2", "fc1"}
    for g in sens.groups.values():
        assert len(g["loss"]) == 2 and g["macs"][1] <= g["macs"][0]
    costs = CostModel(small_cnn, mini.example)
    limits = {"macs": 0.3 * costs.base["macs"], "params": 0.5 * costs.base["params"]}
    ratios = allocate(sens, costs, limits)
    est = costs.estimate(ratios)
    assert est["macs"] <= limits["macs"] and est["params"] <= limits["params"]
    uni = uniform(costs, limits)
    assert sens.predicted_loss(ratios) <= sens.predicted_loss(uni) + 1e-9
    # a layer that barely matters takes most of the cut; a sensitive one is spared
    curve = {p: [5.0, 9.0] if p == "conv2" else [0.01, 0.05] for p in costs.groups}
    groups = {p: {"ratios": [0.5, 0.9], "loss": [0.1 + v for v in c]} for p, c in curve.items()}
    fake = Sensitivity(key="k", base={"loss": 0.1, "accuracy": 0.9}, groups=groups)
    skewed = allocate(fake, costs, {"macs": 0.5 * costs.base["macs"]})
    assert skewed["conv2"] < min(skewed["conv1"], skewed["fc1"])
    assert costs.estimate(skewed)["macs"] <= 0.5 * costs.base["macs"]
    assert fake.predicted_loss(skewed) < fake.predicted_loss(uniform(costs, {"macs": 0.5 * costs.base["macs"]}))
    with pytest.raises(SlimkitError, match="cannot meet the budget"):
        allocate(sens, costs, {"macs": 1.0})


# ---- the loop ------------------------------------------------------------------------------------


def test_optimize_meets_target_holds_constraint_tests_once(
    small_cnn: torch.nn.Module, mini: sk.data.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ev = sys.modules["slimkit.evaluate"]  # (the package attribute is the evaluate function)
    calls: list[str] = []
    real = ev.evaluate

    def counting(model, data, *, split="test", **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append(split)
        return real(model, data, split=split, **kw)

    monkeypatch.setattr(ev, "evaluate", counting)
    cost, timed = sys.modules["slimkit.evaluate.cost"], sys.modules["slimkit.evaluate.cost"].onnx_latency

    def no_openvino(*args, runtime="onnxruntime", **kw):  # noqa: ANN002, ANN003, ANN202
        if runtime == "openvino":  # a second runtime without an operator of the file: ONNX Runtime's figures stand
            raise ModelFileError(f"{args[0][0]} cannot run on openvino: an operator it lacks")
        return timed(*args, runtime=runtime, **kw)

    monkeypatch.setattr(cost, "onnx_latency", no_openvino)
    before = copy.deepcopy(small_cnn.state_dict())
    target = Target(macs=0.4, max_drop=3.0)
    recipe = {
        "steps": [
            {"SensitivityPruneConfig": {"target_macs": 0.4, "probe_ratios": [0.5, 0.9]}},
            {"FineTuneConfig": {"epochs": 1, "lr": 1e-3}},
            {"FoldConfig": {}},
        ]
    }
    result = optimize(small_cnn, mini, target, recipe=recipe, output=tmp_path / "run")
    assert calls == ["test", "test"]  # the original and the final model, once each, at the end
    assert all(torch.equal(v, small_cnn.state_dict()[k]) for k, v in before.items())  # input untouched
    chosen = result.chosen_candidate
    assert result.target_met and chosen.target_ok
    assert chosen.costs["macs"] <= 0.4 * result.base_val["costs"]["macs"]
    assert 100 * (result.base_val["metrics"]["accuracy"] - chosen.metrics["accuracy"]) <= 3.0
    assert count_macs(result.model, mini.example) == chosen.costs["macs"]
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint",
        "model.onnx",
        "recipe.json",
        "report.html",
        "report.json",
        "run.json",
        "sensitivity.json",
    ]
    report = json.loads((out / "report.json").read_text())
    assert report["target_met_on_validation"] and report["chosen"] == chosen.id
    assert report["test"]["after"]["split"] == "test" and report["allocations"][0]["allocation"] == "sensitivity"
    assert list(report["speed"]["runtimes"]) == ["onnxruntime"]
    assert any(n.startswith("no OpenVINO timing: ") for n in report["notes"]) == ("openvino" in runtimes())
    reloaded = sk.load(out / "checkpoint")
    x = mini.splits["test"][0][:16]
    assert torch.allclose(reloaded(x), result.model.eval()(x), atol=1e-5)
    # the report is self-contained HTML with the plots inline
    page = (out / "report.html").read_text()
    parser = _Tags()
    parser.feed(page)
    assert parser.images >= 5 and not parser.external
    for words in ("Pareto front", "Per-layer sensitivity", "Per-layer widths", "File size", "Every step", "Test split"):
        assert words in page
    # a second run without --resume / --force refuses to touch the folder
    with pytest.raises(SlimkitError, match="already exists"):
        optimize(small_cnn, mini, target, recipe=recipe, output=out)


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images, self.external = 0, []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images += 1
            if not a.get("src", "").startswith("data:image/png;base64,"):
                self.external.append(a.get("src"))
        if tag in ("script", "link") or (tag == "a" and "://" in a.get("href", "")):
            self.external.append(tag)


def test_back_off_keeps_the_constraint(small_cnn: torch.nn.Module, mini: sk.data.Dataset) -> None:
    recipe = {
        "steps": [
            {"ChannelPruneConfig": {"target_macs": 0.05, "importance": "l1"}},
            {"FineTuneConfig": {"epochs": 1, "lr": 1e-4}},
        ]
    }
    result = optimize(small_cnn, mini, Target(macs=0.05, max_drop=0.0), recipe=recipe, html=False)
    assert not result.target_met
    backed = [c for c in result.candidates if "backed off" in c.note]
    assert len(backed) == 2  # the step and its milder version both broke the constraint
    assert result.chosen_candidate.quality_ok and result.chosen_candidate.step == "unchanged"
    assert any("NOT met" in n for n in result.notes)


def test_time_budget_stops_training_but_still_finishes(small_cnn: torch.nn.Module, mini: sk.data.Dataset) -> None:
    """Past the budget, training steps are skipped; the quick steps without training (fold, int8) still run."""
    recipe = {"steps": [{"FineTuneConfig": {"epochs": 1}}, {"FineTuneConfig": {"epochs": 1}}, {"FoldConfig": {}}]}
    result = optimize(small_cnn, mini, Target(macs=0.9, time_budget=0.01), recipe=recipe, html=False)
    assert [c.step for c in result.candidates] == ["fold"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in result.model.modules())


def test_interrupted_greedy_run_resumes_after_the_last_finished_step(
    small_cnn: torch.nn.Module, mini: sk.data.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slimkit.optimize.backend import TorchBackend

    recipe = {
        "steps": [
            {"SensitivityPruneConfig": {"target_macs": 0.5, "probe_ratios": [0.5]}},
            {"FineTuneConfig": {"epochs": 1}},
            {"FoldConfig": {}},
        ]
    }
    out = tmp_path / "run"

    def killed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt  # as if the process died during the fold step

    with monkeypatch.context() as m:
        m.setattr(TorchBackend, "transform", killed)
        with pytest.raises(KeyboardInterrupt):
            optimize(small_cnn, mini, Target(macs=0.5), recipe=recipe, output=out)
    assert not (out / "report.json").exists() and [p.name for p in (out / "progress").iterdir()] == ["pass01-step02"]
    lines: list[str] = []
    result = optimize(small_cnn, mini, Target(macs=0.5), recipe=recipe, output=out, resume=True, log=lines.append)
    assert any("resumed after step 2 of pass 1" in s for s in lines)
    assert not any("sensitivity:" in s or "prune round" in s for s in lines)  # nothing done twice
    assert [c.step for c in result.candidates] == ["prune round 1/1 (sensitivity)", "fold"]
    assert result.target_met and (out / "report.json").is_file() and not (out / "progress").exists()


class UserNet(torch.nn.Module):
    """A user's own class: no zoo name, no factory, so slimkit cannot rebuild it from a checkpoint."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


@pytest.mark.parametrize("trials", [0, pytest.param(2, marks=pytest.mark.slow)])  # trials: test_search_resume...
def test_a_class_slimkit_cannot_rebuild_still_runs_to_its_outputs(
    small_cnn: torch.nn.Module, mini: sk.data.Dataset, tmp_path: Path, trials: int
) -> None:
    if trials:
        pytest.importorskip("optuna")
    model = UserNet(copy.deepcopy(small_cnn))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = {
        "steps": [
            {"SensitivityPruneConfig": {"target_macs": 0.5, "probe_ratios": [0.5]}},
            {"FineTuneConfig": {"epochs": 1}},
            {"FoldConfig": {}},
        ]
    }
    lines: list[str] = []
    out = tmp_path / "run"
    result = optimize(model, mini, Target(macs=0.5), recipe=recipe, trials=trials, output=out, log=lines.append)
    assert any("cannot save UserNet" in s for s in lines)  # said once, and the run goes on
    x = mini.splits["test"][0][:8]
    assert count_macs(result.model, x) <= 0.51 * count_macs(model, x)
    program = sk.load(out / "model.pt2")  # the deployable outputs are there without a checkpoint
    torch.testing.assert_close(program(x), result.model(x), atol=1e-4, rtol=1e-4)
    assert (out / "report.json").is_file() and not (out / "checkpoint").exists()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model is untouched


def test_low_rank_step_factorizes_only_insensitive_layers(
    small_cnn: torch.nn.Module, mini: sk.data.Dataset, tmp_path: Path
) -> None:
    recipe = {"steps": [{"LowRankConfig": {"ratio": 0.25}}, {"FineTuneConfig": {"epochs": 1}}]}
    result = optimize(small_cnn, mini, Target(params=0.9, max_drop=4.0), recipe=recipe, output=tmp_path / "run")
    layers = result.sensitivity.layers
    assert layers and all(len(v["accuracy"]) == len(v["ratios"]) for v in layers.values())
    lowrank = [c for c in result.candidates if c.step.startswith("low-rank")]
    assert lowrank and lowrank[0].config["layers"] is not None
    for name in lowrank[0].config["layers"]:  # every factorized layer was cheap on its own
        k = layers[name]["ratios"].index(0.25)
        assert 100 * (result.sensitivity.base["accuracy"] - layers[name]["accuracy"][k]) <= 2.0
    assert result.chosen_candidate.quality_ok
    assert "low-rank sensitivity" in (tmp_path / "run" / "report.html").read_text()


def test_the_backend_exports_the_same_weights_once(
    small_cnn: torch.nn.Module, mini: sk.data.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxscript")
    from slimkit.io import onnx as sk_onnx
    from slimkit.optimize.backend import TorchBackend

    made: list[Path] = []
    real = sk_onnx.export_onnx
    monkeypatch.setattr(sk_onnx, "export_onnx", lambda m, p, x: (made.append(p), real(m, p, x)))
    be = TorchBackend(small_cnn, mini)
    a, b = be.export_onnx(small_cnn, tmp_path / "a.onnx"), be.export_onnx(small_cnn, tmp_path / "b.onnx")
    assert made == [a] and a.read_bytes() == b.read_bytes()  # the timed candidate, then the saved model
    changed = copy.deepcopy(small_cnn)
    with torch.no_grad():
        next(changed.parameters()).mul_(2)
    be.export_onnx(changed, a)  # other weights overwrite a: exported anew
    assert made == [a, a] and a.read_bytes() != b.read_bytes()
    c = be.export_onnx(small_cnn, tmp_path / "c.onnx")  # copied from b, not from the overwritten a
    assert len(made) == 2 and c.read_bytes() == b.read_bytes()
    x = mini.splits["test"][0][:8]
    with torch.no_grad():
        assert torch.allclose(sk.io.onnx.OnnxModel(c)(x), small_cnn(x), atol=1e-4)


def test_search_needs_its_extra(
    monkeypatch: pytest.MonkeyPatch, small_cnn: torch.nn.Module, mini: sk.data.Dataset
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'slimkit\[search\]'"):
        optimize(small_cnn, mini, Target(macs=0.5), recipe={"steps": [{"FoldConfig": {}}]}, trials=1, html=False)


def test_search_resume_runs_only_missing_trials(
    small_cnn: torch.nn.Module, mini: sk.data.Dataset, tmp_path: Path
) -> None:
    pytest.importorskip("optuna")
    import optuna

    recipe = {
        "steps": [
            {"SensitivityPruneConfig": {"target_macs": 0.5, "probe_ratios": [0.5]}},
            {"FineTuneConfig": {"epochs": 1}},
        ]
    }
    out, url = tmp_path / "run", f"sqlite:///{tmp_path / 'shared.db'}"  # any Optuna storage URL
    first = optimize(small_cnn, mini, Target(macs=0.5), recipe=recipe, trials=2, output=out, storage=url, html=False)
    assert len([t for t in first.trials if t["state"] in ("COMPLETE", "PRUNED")]) == 2
    with pytest.raises(SlimkitError, match="--resume"):  # the run folder is taken
        optimize(small_cnn, mini, Target(macs=0.5), recipe=recipe, trials=3, output=out, storage=url)
    lines: list[str] = []
    again = optimize(
        small_cnn,
        mini,
        Target(macs=0.5),
        recipe=recipe,
        trials=3,
        output=out,
        storage=url,
        resume=True,
        html=False,
        log=lines.append,
    )
    assert any("2 finished trial(s) in the study, 1 to run" in s for s in lines)
    study = optuna.load_study(study_name="slimkit-optimize", storage=url)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert study.trials[2].state.name in ("COMPLETE", "PRUNED") and again.chosen_candidate.target_ok
    assert (out / "report.json").is_file() and json.loads((out / "report.json").read_text())["trials"]


# ---- CLI -----------------------------------------------------------------------------------------


def test_cli_bad_target_and_resume_errors(cli, tmp_path: Path) -> None:  # noqa: ANN001
    code, _, err = cli("optimize", tmp_path, "-d", "digits", "--target", "flops=0.2", "-o", tmp_path / "x")
    assert code == 2 and "unknown target 'flops'" in err
    code, _, err = cli(
        "optimize", tmp_path, "-d", "digits", "--target", "macs=0.2", "--time-budget", "soon", "-o", tmp_path / "x"
    )
    assert code == 2 and "cannot read the duration" in err
    model = sk.zoo.create_for("resnet_cifar", sk.data.load("digits"), depth=8, width=0.25)
    sk.save(model, tmp_path / "ckpt", example=torch.zeros(1, 1, 8, 8))
    code, _, err = cli(
        "optimize", tmp_path / "ckpt", "-d", "digits", "--target", "macs=0.2", "--resume", "-o", tmp_path / "x"
    )
    assert code == 2 and "cannot resume" in err and not (tmp_path / "x").exists()


def test_cli_runs_a_recipe_file(cli, small_cnn: torch.nn.Module, mini: sk.data.Dataset, tmp_path: Path) -> None:  # noqa: ANN001
    np = pytest.importorskip("numpy")
    s = mini.splits
    np.savez(
        tmp_path / "mini.npz",
        x=s["train"][0].numpy(),
        y=s["train"][1].numpy(),
        x_val=s["val"][0].numpy(),
        y_val=s["val"][1].numpy(),
        x_test=s["test"][0].numpy(),
        y_test=s["test"][1].numpy(),
    )
    sk.save(small_cnn, tmp_path / "ckpt", example=mini.example)
    (tmp_path / "r.yaml").write_text(
        "steps:\n  - SensitivityPruneConfig: {target_macs: 0.5, probe_ratios: [0.5]}\n  - FineTuneConfig: {epochs: 1}\n"
    )
    code, out, err = cli(
        "optimize",
        tmp_path / "ckpt",
        "-d",
        tmp_path / "mini.npz",
        "--target",
        "macs=0.5",
        "--max-drop",
        "5",
        "--recipe",
        tmp_path / "r.yaml",
        "-o",
        tmp_path / "run",
    )
    assert code == 0, err
    assert "target met on validation" in out and (tmp_path / "run" / "report.html").is_file()
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["recipe"]["steps"][0]["type"] == "SensitivityPruneConfig"


def test_global_allocation_prunes_to_the_macs_share(small_cnn: torch.nn.Module, mini: sk.data.Dataset) -> None:
    step = SensitivityPruneConfig(target_macs=0.5, allocation="global", round_to=4, calibration_batches=2)
    recipe = Recipe((step, FineTuneConfig(epochs=1)))
    result = optimize(copy.deepcopy(small_cnn), mini, Target(macs=0.5, max_drop=20), recipe=recipe, quantize=False)
    assert count_macs(result.model, mini.example) <= 0.5 * count_macs(small_cnn, mini.example)
    [record] = [r for r in records(result.model) if r.transform == "ChannelPruneConfig"]
    assert record.config["global_ranking"] and record.config["calibration_batches"] == 2
    assert record.details["round_to"] == 4


def test_prune_rounds_spread_the_cut(small_cnn: torch.nn.Module, mini: sk.data.Dataset) -> None:
    """Rounds to whole channel blocks still step down the MACs evenly: no round keeps the narrow
    groups whole and leaves the last one to cut them in half."""
    step = SensitivityPruneConfig(target_macs=0.3, rounds=4, round_to=4, calibration_batches=1, probe_ratios=(0.5, 0.8))
    recipe = Recipe((step, FineTuneConfig(epochs=1, steps_per_epoch=2)))
    result = optimize(copy.deepcopy(small_cnn), mini, Target(macs=0.3, max_drop=100), recipe=recipe, quantize=False)
    macs = [c.costs["macs"] for c in result.candidates if c.step.startswith("prune round")]
    assert len(macs) == 4 and all(0.55 < b / a < 0.95 for a, b in zip(macs, macs[1:], strict=False))


# ---- slow: int8, kill + resume, headless Chromium ------------------------------------------------------


@pytest.mark.slow
def test_auto_recipe_quantizes_for_a_file_budget(
    small_cnn: torch.nn.Module, mini: sk.data.Dataset, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    result = optimize(
        small_cnn, mini, Target(macs=0.5, bytes=0.1, max_drop=3.0), output=tmp_path / "run", finetune_epochs=1
    )
    assert result.int8_path == tmp_path / "run" / "model.int8.onnx" and result.int8_path.is_file()
    assert result.target_met
    assert result.int8_path.stat().st_size <= 0.1 * result.base_val["costs"]["bytes"]
    assert not (tmp_path / "run" / ".work").exists()


@pytest.mark.slow
def test_kill_then_resume_continues_from_the_last_finished_trial(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    torch.manual_seed(0)
    data = sk.data.load("digits")
    model = sk.zoo.create_for("resnet_cifar", data, depth=8)
    sk.train.fit(model, data.train, epochs=2, progress=False)
    sk.save(model, tmp_path / "ckpt", example=data.example)
    (tmp_path / "r.json").write_text(
        json.dumps(
            {
                "steps": [
                    {"SensitivityPruneConfig": {"target_macs": 0.6, "probe_ratios": [0.5]}},
                    {"FineTuneConfig": {"epochs": 2}},
                ]
            }
        )
    )
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "slimkit",
        "optimize",
        str(tmp_path / "ckpt"),
        "-d",
        "digits",
        "--target",
        "macs=0.6",
        "--recipe",
        str(tmp_path / "r.json"),
        "--trials",
        "4",
        "-o",
        str(run),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"sqlite:///{run / 'study.db'}"
    import time

    deadline = time.monotonic() + 240
    finished = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="slimkit-optimize", storage=url)
            finished = len([t for t in study.trials if t.state.is_finished()])
        except Exception:  # noqa: BLE001 (the study does not exist yet)
            continue
        if finished >= 1:
            break
    proc.kill()
    proc.wait()
    assert finished >= 1, "no trial finished before the deadline"
    for name in ("report.json", "report.html", "model.onnx"):
        assert not (run / name).exists()  # never half-written: not written at all yet
    for p in run.rglob("*"):  # a killed atomic write leaves at most a hidden temporary, never a partial output
        assert not p.name.endswith(".tmp") or p.name.startswith("."), p
    done_before = {
        t.number
        for t in optuna.load_study(study_name="slimkit-optimize", storage=url).trials
        if t.state.name == "COMPLETE"
    }
    code = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=600)
    assert code.returncode == 0, code.stderr
    study = optuna.load_study(study_name="slimkit-optimize", storage=url)
    complete = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(complete) == 4 and done_before <= {t.number for t in complete}
    assert (run / "report.json").is_file()


@pytest.mark.slow
def test_report_opens_in_headless_chromium(small_cnn: torch.nn.Module, mini: sk.data.Dataset, tmp_path: Path) -> None:
    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if browser is None:
        pytest.skip("no headless Chromium (apt-get install chromium-headless-shell)")
    recipe = {"steps": [{"SensitivityPruneConfig": {"target_macs": 0.5, "probe_ratios": [0.5]}}]}
    optimize(small_cnn, mini, Target(macs=0.5), recipe=recipe, output=tmp_path / "run")
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1200,2400",
            "--enable-logging=stderr",
            "--v=0",
            (tmp_path / "run" / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and shot.stat().st_size > 50_000
    assert "Uncaught" not in proc.stderr and "Failed to load resource" not in proc.stderr


def test_a_run_without_output_folder_leaves_no_files_behind() -> None:
    # optimize(..., output=None) works in a temporary folder (the result's int8 file lives there):
    # it must be gone once the process exits
    code = "from slimkit.optimize.run import run_folder\nwith run_folder(None, resume=False, force=False, manifest={}) "
    code += "as (p, temp):\n    (p / 'model.int8.onnx').write_bytes(b'x')\nprint(p, temp)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "True" and out[0] and not Path(out[0]).exists()
