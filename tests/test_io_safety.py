"""Issue 17: loading model files never runs code from them, and every bad file is a one-line error."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import slimkit as sk
from slimkit.core.errors import ModelFileError, ShapeError, SlimkitError, first_line
from slimkit.io.checkpoint import build_from_factory
from tests.conftest import zoo_example

# --- .pt2 archives that would unpickle ---------------------------------------------------------


class _Evil:
    """Unpickling writes ``marker``; with ``tensor`` it then returns a real tensor (loading succeeds)."""

    def __init__(self, marker: Path, tensor: bool) -> None:
        self.marker, self.tensor = marker, tensor

    def __reduce__(self) -> tuple:
        code = f"__import__('pathlib').Path({str(self.marker)!r}).write_text('pwned')"
        if self.tensor:
            code = f"({code}, __import__('torch').nn.Parameter(__import__('torch').zeros(10)))[1]"
        return (eval, (code,))


def _pt2(tmp_path: Path) -> Path:
    path = tmp_path / "lenet.pt2"
    if not path.exists():
        torch.manual_seed(0)
        sk.export(sk.zoo.create("lenet5").eval(), path, zoo_example("lenet5"))
    return path


def _rewrite(src: Path, dst: Path, edit: Any) -> Path:
    """Copy the zip ``src`` to ``dst``; ``edit(entries)`` changes the {name: bytes} dict (in order)."""
    with zipfile.ZipFile(src) as z:
        entries = {info.filename: z.read(info) for info in z.infolist()}
    edit(entries)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return dst


def _root(entries: dict[str, bytes]) -> str:
    return next(iter(entries)).split("/")[0]


def _pickled_weight(marker: Path, tensor: bool) -> Any:
    def edit(entries: dict[str, bytes]) -> None:
        root = _root(entries)
        config_name = f"{root}/data/weights/model_weights_config.json"
        config = json.loads(entries[config_name])
        meta = config["config"]["fc3.bias"]
        meta["use_pickle"] = True
        buffer = io.BytesIO()
        torch.save(_Evil(marker, tensor), buffer)  # the format torch.export writes for pickled weights
        entries[f"{root}/data/weights/{meta['path_name']}"] = buffer.getvalue()
        entries[config_name] = json.dumps(config).encode()

    return edit


@pytest.mark.parametrize("tensor", [False, True], ids=["raises", "loads"])
def test_pt2_with_pickled_weight_is_refused_and_nothing_runs(tensor: bool, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = _rewrite(_pt2(tmp_path), tmp_path / "evil.pt2", _pickled_weight(marker, tensor))
    with pytest.raises(ModelFileError, match=r"pickled data.*trust_pickle=True \(CLI: --trust-pickle\)") as exc:
        sk.load(evil)
    assert "\n" not in str(exc.value)
    assert not marker.exists()
    if tensor:  # the user vouches for the file: it loads (and its code runs, as pickles do)
        model = sk.load(evil, trust_pickle=True)
        assert model(zoo_example("lenet5")).shape == (4, 10)


def test_pt2_load_forces_weights_only_unpickling(tmp_path: Path) -> None:
    """Second line of defence: even past the archive check, torch.export.load cannot unpickle code."""
    from slimkit.io.pt2 import load_program

    marker = tmp_path / "marker"
    evil = _rewrite(_pt2(tmp_path), tmp_path / "evil.pt2", _pickled_weight(marker, tensor=True))
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    with pytest.raises(ModelFileError, match="not a loadable .pt2 program"):
        load_program(evil, check=False)
    assert not marker.exists()
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == before  # restored


def _custom_constant(entries: dict[str, bytes]) -> None:
    root = _root(entries)
    entries[f"{root}/data/constants/custom_obj_0"] = b"x"
    config = {
        "config": {"c": {"path_name": "custom_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}
    }
    entries[f"{root}/data/constants/model_constants_config.json"] = json.dumps(config).encode()


def _opaque_constant(entries: dict[str, bytes]) -> None:
    root = _root(entries)
    entries[f"{root}/data/constants/opaque_obj_0"] = b"x"
    config = {
        "config": {"c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": False, "tensor_meta": None}}
    }
    entries[f"{root}/data/constants/model_constants_config.json"] = json.dumps(config).encode()


def _legacy_weights(entries: dict[str, bytes]) -> None:
    entries[f"{_root(entries)}/data/weights/model.pt"] = b"x"


def _compiled(entries: dict[str, bytes]) -> None:
    entries[f"{_root(entries)}/data/aotinductor/model/model.so"] = b"\x7fELF"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_custom_constant, "pickled data"),
        (_opaque_constant, "pickled data"),
        (_legacy_weights, "pickled data"),
        (_compiled, "compiled code"),
    ],
    ids=["custom-obj", "opaque-obj", "legacy-weights", "aoti"],
)
def test_pt2_other_unsafe_payloads_are_refused(edit: Any, message: str, tmp_path: Path) -> None:
    evil = _rewrite(_pt2(tmp_path), tmp_path / "evil.pt2", edit)
    with pytest.raises(ModelFileError, match=f"{message}.*trust_pickle=True"):
        sk.load(evil)


def _program(edit: Any) -> Any:
    """An archive edit that changes the serialized program (models/model.json)."""

    def apply(entries: dict[str, bytes]) -> None:
        name = f"{_root(entries)}/models/model.json"
        program = json.loads(entries[name])
        edit(program)
        entries[name] = json.dumps(program).encode()

    return apply


def _code(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).write_text('pwned')"


def _walk(node: Any, key: str, change: Any) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, str):
                node[k] = change(v)
            else:
                _walk(v, key, change)
    elif isinstance(node, list):
        for v in node:
            _walk(v, key, change)


def _expression(marker: Path) -> Any:  # torch parses shape expressions with sympy.sympify, which evaluates them
    return _program(lambda p: _walk(p, "expr_str", lambda v: f"({_code(marker)}, {v})[1]"))


def _target(marker: Path) -> Any:
    return _program(lambda p: p["graph_module"]["graph"]["nodes"][0].update(target="torch.hub.load"))


def _name(marker: Path) -> Any:  # names become Python source that torch.fx generates and executes
    return _program(lambda p: _walk(p, "name", lambda v: f"{v}={_code(marker)}" if v == "input" else v))


def _attribute(marker: Path) -> Any:
    return _program(lambda p: _walk(p, "parameter_name", lambda v: f'{v}"),{_code(marker)},("'))


def _line_break(marker: Path) -> Any:  # a stack trace line becomes a comment in generated code
    return _program(lambda p: _walk(p, "stack_trace", lambda v: f"{v}\r{_code(marker)}"))


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (_expression, "expr_str"),
        (_target, "target"),
        (_name, "name"),
        (_attribute, "parameter_name"),
        (_line_break, "line break"),
    ],
    ids=["sympify", "target", "name", "attribute", "line-break"],
)
def test_pt2_program_strings_that_would_run_code_are_refused(edit: Any, field: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = _rewrite(_pt2(tmp_path), tmp_path / "evil.pt2", edit(marker))
    with pytest.raises(ModelFileError, match=f"{field}.*trust_pickle=True") as exc:
        sk.load(evil)(zoo_example("lenet5"))
    assert "\n" not in str(exc.value)
    assert not marker.exists()


def test_pt2_guard_code_is_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    edit = _program(lambda p: p.update(guards_code=[f"{_code(marker)} > 0"]))  # torch execs guard code
    model = sk.load(_rewrite(_pt2(tmp_path), tmp_path / "evil.pt2", edit))
    assert model(zoo_example("lenet5")).shape == (4, 10)
    assert not marker.exists()


def test_pt2_zip_bomb_and_duplicate_entries_are_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(_pt2(tmp_path)) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info))
        z.writestr(f"{src.namelist()[0].split('/')[0]}/extra/pad", b"\0" * (80 << 20))  # 80 MB -> 80 KB
    with pytest.raises(ModelFileError, match="uncompressed"):
        sk.load(bomb)
    dup = tmp_path / "dup.pt2"
    with zipfile.ZipFile(_pt2(tmp_path)) as src, zipfile.ZipFile(dup, "w") as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info))
        with pytest.warns(UserWarning, match="Duplicate name"):
            z.writestr(src.namelist()[-1], b"again")
    with pytest.raises(ModelFileError, match="twice"):
        sk.load(dup)


# --- .pt2 programs are usable models ----------------------------------------------------------


def test_exported_pt2_evaluates_and_exports_like_the_checkpoint(digits: sk.data.Dataset, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = sk.zoo.create_for("resnet_cifar", digits, depth=8, width=0.5)
    sk.train.fit(model, digits.train, epochs=1, progress=False)
    sk.save(model, tmp_path / "ck", example=digits.example)
    checkpoint = sk.load(tmp_path / "ck")
    sk.export(checkpoint, tmp_path / "ck.pt2")
    program = sk.load(tmp_path / "ck.pt2")
    want = sk.evaluate(checkpoint, digits, latency=False)
    got = sk.evaluate(program, digits, latency=False)
    assert got.metrics["accuracy"] == want.metrics["accuracy"]
    program.train()
    program.eval()
    sk.export(program, tmp_path / "x.onnx", digits.example)
    onnx_report = sk.evaluate(sk.load(tmp_path / "x.onnx"), digits, latency=False)
    assert onnx_report.metrics["accuracy"] == want.metrics["accuracy"]


# --- factory checkpoints -----------------------------------------------------------------------


def _factory_checkpoint(tmp_path: Path, factory: str, kwargs: dict[str, Any]) -> Path:
    ckpt = tmp_path / "ckpt"
    sk.save(sk.zoo.create("lenet5"), ckpt, force=True)
    spec = json.loads((ckpt / "spec.json").read_text())
    spec["arch"] = {"kind": "factory", "factory": factory, "kwargs": kwargs}
    (ckpt / "spec.json").write_text(json.dumps(spec))
    return ckpt


def test_factory_named_by_a_file_is_not_proposed_or_called(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    ckpt = _factory_checkpoint(tmp_path, "os:system", {"command": f"touch {marker}"})
    with pytest.raises(ModelFileError) as exc:
        sk.load(ckpt)
    assert "factory='os:system'" not in str(exc.value) and "not a model factory" in str(exc.value)
    with pytest.raises(ModelFileError, match="standard library"):
        sk.load(ckpt, factory="os:system")
    assert not marker.exists()
    # a plausible factory is named, with the warning that confirming runs its code
    ckpt = _factory_checkpoint(tmp_path, "slimkit.zoo.cnn:lenet5", {})
    with pytest.raises(ModelFileError, match="imports that code.*factory='slimkit.zoo.cnn:lenet5'"):
        sk.load(ckpt)
    with pytest.raises(ModelFileError, match="was built by 'slimkit.zoo.cnn:lenet5', not 'slimkit.zoo.cnn:seed_cnn'"):
        sk.load(ckpt, factory="slimkit.zoo.cnn:seed_cnn")
    assert isinstance(sk.load(ckpt, factory="slimkit.zoo.cnn:lenet5"), torch.nn.Module)


def test_build_from_factory_refuses_dangerous_callables_and_kwargs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "evil_factories.py").write_text(
        "from os import system as make_model\nSIZE = 3\n\ndef make_int():\n    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for factory, message in [
        ("builtins:eval", "standard library"),
        ("subprocess:run", "standard library"),
        ("pickle:loads", "standard library"),
        ("torch:load", "not a model factory"),
        ("slimkit.io:load", "not a model factory"),
        ("evil_factories:make_model", "standard library"),  # a re-export is judged by where it is defined
        ("evil_factories:SIZE", "not callable"),
        ("evil_factories:__builtins__", "must look like"),
        ("os.path", "must look like"),
    ]:
        with pytest.raises(ModelFileError, match=message):
            build_from_factory(factory, {})
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    for kwargs, message in [({"x": deep}, "nested"), ({"x": object()}, "JSON"), ({"x": "a" * 2_000_000}, "large")]:
        with pytest.raises(ModelFileError, match=message):
            build_from_factory("slimkit.zoo.cnn:lenet5", kwargs)
    with pytest.raises(ModelFileError, match="returned int, not a torch.nn.Module"):
        build_from_factory("evil_factories:make_int", {})


# --- sizes declared in spec.json ---------------------------------------------------------------

_PEAK = """
import json, resource, sys
import slimkit as sk
status = open("/proc/self/status").read()
vm = int(next(line for line in status.splitlines() if line.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))  # hostile sizes fail fast
def hwm():  # peak resident kB of this process (ru_maxrss would keep the parent's peak across exec)
    return int(next(x for x in open("/proc/self/status") if x.startswith("VmHWM:")).split()[1])
base = hwm()
out = {}
for path in sys.argv[1:]:
    try:
        sk.load(path)
        out[path] = "loaded"
    except sk.core.errors.ModelFileError as exc:
        out[path] = "ModelFileError: " + str(exc)
    except BaseException as exc:
        out[path] = type(exc).__name__ + ": " + str(exc)[:200]
out["peak_mb"] = (hwm() - base) / 1024
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="measures peak memory via /proc and rlimits")
def test_hostile_sizes_are_refused_before_allocating(tmp_path: Path) -> None:
    sk.save(sk.zoo.create("seed_cnn"), tmp_path / "ckpt")
    paths = []
    for width in (8, 1000):  # 420 MB and 38 GB of weights declared next to a 6.7 MB file
        ckpt = tmp_path / f"w{width}"
        (ckpt).mkdir()
        (ckpt / "weights.safetensors").write_bytes((tmp_path / "ckpt" / "weights.safetensors").read_bytes())
        spec = json.loads((tmp_path / "ckpt" / "spec.json").read_text())
        spec["arch"]["kwargs"] = {"width": width}
        (ckpt / "spec.json").write_text(json.dumps(spec))
        paths.append(str(ckpt))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", _PEAK, *paths], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["peak_mb"] < 100, out
    for path in paths:
        assert out[path].startswith("ModelFileError: ") and "does not match the architecture" in out[path], out[path]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"width": -1}, "width"),
        ({"width": math.nan}, "width"),
        ({"width": "abc"}, "width"),
        ({"width": True}, "width"),
        ({"num_classes": 0}, "num_classes"),
        ({"input_size": 2.5}, "input_size"),
    ],
)
def test_zoo_arguments_are_checked(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(SlimkitError, match=f"seed_cnn {field}") as exc:
        sk.zoo.create("seed_cnn", **kwargs)
    assert "\n" not in str(exc.value)


def test_zoo_list_arguments_and_depths_are_checked() -> None:
    with pytest.raises(SlimkitError, match="recsys_mlp cardinalities"):
        sk.zoo.create("recsys_mlp", cardinalities=[10, "x"])
    with pytest.raises(SlimkitError, match="resnet_cifar depth"):
        sk.zoo.create("resnet_cifar", depth=6 * 10**6 + 2)
    with pytest.raises(SlimkitError, match="text_lstm dropout"):
        sk.zoo.create("text_lstm", dropout=1.5)


# --- malformed spec.json -----------------------------------------------------------------------


def _set(path: str, value: Any) -> Any:
    def edit(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = spec
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value

    return edit


_NEGATIVE = {"in_features": -1, "out_features": 10}
_GARBAGE = [
    ("arch.name", 123, "arch.name"),
    ("arch.kind", ["zoo"], "arch.kind"),
    ("arch.kwargs", "abc", "arch.kwargs"),
    ("arch.kwargs", {"width": "abc"}, "width"),
    ("arch.kwargs", {"nope": 1}, "arch.kwargs"),
    ("arch.changes", "abc", "arch.changes"),
    ("arch.changes", [5], "arch.changes\\[0\\]"),
    ("arch.changes", [{"op": 5}], "arch.changes\\[0\\].op"),
    ("arch.changes", [{"op": "replace", "path": 1, "module": {}}], "arch.changes\\[0\\].path"),
    ("arch.changes", [{"op": "replace", "path": "fc2", "module": []}], "arch.changes\\[0\\].module"),
    ("arch.changes", [{"op": "set", "path": "", "attr": "x"}], "arch.changes\\[0\\].value"),
    ("arch.changes", [{"op": "replace", "path": "fc2", "module": {"type": "Linear", "args": 3}}], "args"),
    ("arch.changes", [{"op": "replace", "path": "fc3", "module": {"type": "Linear", "args": _NEGATIVE}}], "change 0"),
    ("arch.input", {"shape": "x", "dtype": "float32"}, "arch.input.shape"),
    ("arch.input", {"shape": [1, 28, 28], "dtype": "load"}, "arch.input.dtype"),
    ("arch", "x", "arch"),
    ("tied", [1, 2], "tied"),
    ("tied", {"fc2.weight": 3}, "tied"),
    ("encodings", "x", "encodings"),
    ("encodings", {"fc1.weight": {"codec": "sparse", "shape": "x"}}, "encodings"),
    ("version", "abc", "version"),
    ("version", 2, "newer slimkit"),
    ("history", "abc", "history"),
    ("format", None, "format"),
]


@pytest.mark.parametrize(("key", "value", "field"), _GARBAGE, ids=[f"{k}={v!r}"[:40] for k, v, _ in _GARBAGE])
def test_malformed_spec_fields_are_one_line_errors(key: str, value: Any, field: str, tmp_path: Path) -> None:
    sk.save(sk.zoo.create("lenet5"), tmp_path / "ckpt", example=torch.zeros(2, 1, 28, 28))
    spec_path = tmp_path / "ckpt" / "spec.json"
    spec = json.loads(spec_path.read_text())
    _set(key, value)(spec)
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(ModelFileError, match=field) as exc:
        sk.load(tmp_path / "ckpt")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a": 1' + "0" * 5000 + "}", ""])
def test_unparsable_spec_is_a_one_line_error(text: str, tmp_path: Path) -> None:
    sk.save(sk.zoo.create("lenet5"), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "spec.json").write_text(text)
    with pytest.raises(ModelFileError, match="spec.json") as exc:
        sk.load(tmp_path / "ckpt")
    assert "\n" not in str(exc.value)


# --- ONNX --------------------------------------------------------------------------------------


def test_onnx_model_on_wrong_shapes_is_a_shape_error(tmp_path: Path) -> None:
    path = sk.export(sk.zoo.create("lenet5"), tmp_path / "m.onnx", zoo_example("lenet5"))
    model = sk.load(path)
    with pytest.raises(ShapeError, match=r"expects inputs of shape \(N, 1, 28, 28\), got shape \(2, 3, 28, 28\)"):
        model(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ShapeError, match=r"got shape \(2, 784\)"):
        model(torch.zeros(2, 784))
    with pytest.raises(ShapeError, match="dtype int64") as exc:
        model(torch.zeros(2, 1, 28, 28, dtype=torch.int64))
    assert "\n" not in str(exc.value)

    class Silent:
        def run(self, *args: Any) -> Any:
            raise RuntimeError("")

    model.session = Silent()  # an ONNX Runtime failure without a message
    with pytest.raises(ShapeError, match="RuntimeError"):
        model(torch.zeros(2, 1, 28, 28))


def test_onnx_load_error_without_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    path = sk.export(sk.zoo.create("lenet5"), tmp_path / "m.onnx", zoo_example("lenet5"))

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise ValueError()

    monkeypatch.setattr(onnx, "load", fail)
    with pytest.raises(ModelFileError, match=r"not a loadable ONNX model \(ValueError\)"):
        sk.load(path)


def test_first_line() -> None:
    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(ValueError("\n  bad value\nmore")) == "bad value"


# --- Keras -------------------------------------------------------------------------------------


def test_garbage_keras_files_and_refused_configs(tmp_path: Path) -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    from slimkit.keras.files import load_file

    for name, data in [("empty.keras", b""), ("garbage.keras", b"not a zip")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelFileError, match="not a valid Keras archive") as exc:
            load_file(tmp_path / name)
        assert "not found" not in str(exc.value).lower() and "\n" not in str(exc.value)

    @keras.saving.register_keras_serializable(package="issue17")
    class Doubler(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return x * 2

    inputs = keras.Input((4,))
    keras.Model(inputs, Doubler()(inputs)).save(tmp_path / "custom.keras")
    keras.saving.get_custom_objects().pop("issue17>Doubler")
    with pytest.raises(ModelFileError, match="cannot load") as exc:
        load_file(tmp_path / "custom.keras")
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 400
