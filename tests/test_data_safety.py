"""User ``.npz`` datasets: every unusable file is one DataError line, raised before any long work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import slimkit as sk
from slimkit.core.errors import DataError
from slimkit.data import files
from slimkit.data.files import load_npz
from tests.conftest import CliRun

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 3)).astype(np.float32)
Y = np.repeat([0, 1], 20)


def refused(path: Path, match: str, **kwargs: object) -> str:
    """Load ``path``, expect a one-line DataError matching ``match``; return its message."""
    with pytest.raises(DataError, match=match) as exc:
        sk.data.load(path, **kwargs)
    message = str(exc.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def saved(tmp_path: Path, name: str = "data.npz", **arrays: object) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def npy_bytes(shape: tuple[int, ...], descr: str, data: bytes) -> bytes:
    """A ``.npy`` file whose header declares ``shape`` and ``descr`` whatever ``data`` holds."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


# ---------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("label", [10**6, 10**9])
def test_label_far_above_the_rows_is_refused(tmp_path: Path, label: int) -> None:
    path = saved(tmp_path, x=X, y=np.r_[Y[:-1], label])
    message = refused(path, f"holds label {label}")
    assert "np.unique(y, return_inverse=True)" in message


def test_labels_in_a_test_split_are_checked_too(tmp_path: Path) -> None:
    path = saved(tmp_path, x=X, y=Y, x_val=X[:4], y_val=Y[:4], x_test=X[:4], y_test=np.array([0, 1, 0, 5000]))
    refused(path, "y_test holds label 5000")


def test_class_count_is_capped_even_with_names(tmp_path: Path) -> None:
    names = np.array([f"c{i}" for i in range(10_001)])
    refused(saved(tmp_path, x=X, y=Y, classes=names), "at most 10,000")


def test_as_many_classes_as_rows_is_accepted(tmp_path: Path) -> None:
    data = sk.data.load(saved(tmp_path, x=X[:20], y=np.arange(20)))
    assert data.num_classes == 20 and sum(data.sizes().values()) == 20


def test_named_classes_must_cover_the_labels(tmp_path: Path) -> None:
    refused(saved(tmp_path, x=X, y=Y, classes=np.array(["a"])), "classes names 1")
    data = sk.data.load(saved(tmp_path, x=X, y=Y, classes=np.array([b"no", b"yes"])))
    assert data.classes == ["no", "yes"]


# ----------------------------------------------------------------------- malformed arrays
BAD_ARRAYS = {
    "negative label": ({"x": X, "y": np.r_[Y[:-1], -1]}, "holds label -1"),
    "negative label in val": (
        {"x": X, "y": Y, "x_val": X[:2], "y_val": np.array([0, -3])},
        "y_val holds label -3",
    ),
    "zero rows": ({"x": np.zeros((0, 3), np.float32), "y": np.zeros(0, int)}, "x has no rows"),
    "empty val": ({"x": X, "y": Y, "x_val": X[:0], "y_val": Y[:0]}, "x_val has no rows"),
    "string x": ({"x": np.full((40, 3), "a"), "y": Y}, "inputs must be real numbers"),
    "complex x": ({"x": X.astype(np.complex64), "y": Y}, "inputs must be real numbers"),
    "datetime x": ({"x": np.zeros((40, 3), "datetime64[s]"), "y": Y}, "inputs must be real numbers"),
    "bytes y": ({"x": X, "y": Y.astype("S1")}, "integer class labels"),
    "bool y": ({"x": X, "y": Y.astype(bool)}, "cast them to int"),
    "integral float y": ({"x": X, "y": Y.astype(float)}, "cast them to int"),
    "2-D y": ({"x": X, "y": Y[:, None]}, "1-D array of integer class labels"),
    "nan x": ({"x": np.where(X > 1, np.nan, X), "y": Y}, "x holds NaN or infinite"),
    "inf x_test": (
        {"x": X, "y": Y, "x_test": np.full((2, 3), np.inf, np.float32), "y_test": Y[:2]},
        "x_test holds NaN or infinite",
    ),
    "beyond float32": ({"x": np.r_[X[:-1], [[0, 0, 1e39]]], "y": Y}, "1e\\+39, beyond float32's range"),
    "1-D x": ({"x": X[:, 0], "y": Y}, r"reshape\(-1, 1\)"),
    "0-D x": ({"x": np.float32(1), "y": Y}, "inputs must be"),
    "empty samples": ({"x": np.zeros((40, 0), np.float32), "y": Y}, "holds no values"),
    "float x_val, int x": (
        {"x": np.arange(120).reshape(40, 3), "y": Y, "x_val": X[:2], "y_val": Y[:2]},
        "give all x one dtype",
    ),
    "negative integer ids": ({"x": np.full((40, 3), -5), "y": Y}, "ids, which are >= 0"),
    "mismatched rows": ({"x": X, "y": Y[:-1]}, "40 rows but y has 39"),
    "mismatched val samples": ({"x": X, "y": Y, "x_val": X[:2, :2], "y_val": Y[:2]}, "samples have shape"),
    "integer classes": ({"x": X, "y": Y, "classes": np.array([0, 1])}, "names \\(strings\\)"),
    "2-D classes": ({"x": X, "y": Y, "classes": np.array([["a", "b"]])}, "1-D array of names"),
    "one class": ({"x": X, "y": np.zeros(40, int)}, "only class 0; training needs at least 2 classes"),
    "three rows": ({"x": X[:3], "y": np.array([0, 1, 0])}, "x has 3 rows; .* at least 10"),
}


@pytest.mark.parametrize("case", BAD_ARRAYS, ids=list(BAD_ARRAYS))
def test_unusable_arrays_are_one_line_errors(tmp_path: Path, case: str) -> None:
    arrays, match = BAD_ARRAYS[case]
    refused(saved(tmp_path, **arrays), match)


def test_ten_rows_with_a_rare_class_still_split(tmp_path: Path) -> None:
    # found by the property test: a stratified 1-row test split cannot hold 2 classes
    data = sk.data.load(saved(tmp_path, x=X[:10], y=np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])))
    assert data.sizes() == {"train": 8, "val": 1, "test": 1}
    assert len(data.splits["train"][1].unique()) == 2


def test_bool_and_float64_inputs_become_float32(tmp_path: Path) -> None:
    data = sk.data.load(saved(tmp_path, x=X > 0, y=Y))
    assert data.splits["train"][0].dtype == torch.float32
    assert set(torch.cat([x.flatten() for x, _ in data.splits.values()]).tolist()) == {0.0, 1.0}
    data = sk.data.load(saved(tmp_path, x=X.astype(np.float64), y=Y))
    assert data.splits["test"][0].dtype == torch.float32 and data.sizes() == {"train": 32, "val": 4, "test": 4}


def test_as_tensor_shares_matching_arrays_and_converts_once() -> None:
    x = np.ones((5, 3), np.float32)
    assert sk.data.base.as_tensor(x, torch.float32).data_ptr() == x.ctypes.data  # no copy
    x64 = np.arange(15.0).reshape(5, 3)
    out = sk.data.base.as_tensor(x64, torch.float32, rows=np.array([4, 0]))
    assert out.dtype == torch.float32 and out.tolist() == [[12.0, 13.0, 14.0], [0.0, 1.0, 2.0]]


# ----------------------------------------------------------------------- files and zips
def test_directory_empty_file_and_special_files(tmp_path: Path) -> None:
    (tmp_path / "dir.npz").mkdir()
    refused(tmp_path / "dir.npz", "is a directory")
    (tmp_path / "empty.npz").write_bytes(b"")
    refused(tmp_path / "empty.npz", r"is empty \(0 bytes\)")
    if os.path.exists("/dev/zero"):
        (tmp_path / "zero.npz").symlink_to("/dev/zero")
        refused(tmp_path / "zero.npz", "not a regular file")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.npz")
        refused(tmp_path / "fifo.npz", "not a regular file")  # and does not hang
    (tmp_path / "dangling.npz").symlink_to(tmp_path / "nowhere.npz")
    refused(tmp_path / "dangling.npz", "no such dataset file")


def test_symlink_to_a_good_file_loads(tmp_path: Path) -> None:
    (tmp_path / "link.npz").symlink_to(saved(tmp_path, x=X, y=Y))
    assert sk.data.load(tmp_path / "link.npz").num_classes == 2


def test_control_characters_in_the_path_stay_on_one_line(tmp_path: Path) -> None:
    refused(tmp_path / "a\nb.npz", "no such dataset file")


def write_zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def good_members() -> dict[str, bytes]:
    import io

    out = {}
    for key, arr in {"x": X, "y": Y}.items():
        buf = io.BytesIO()
        np.save(buf, arr)
        out[f"{key}.npy"] = buf.getvalue()
    return out


def test_a_zip_of_many_members_is_refused_from_its_directory(tmp_path: Path) -> None:
    members = good_members() | {f"m{i}.npy": b"" for i in range(3000)}
    message = refused(write_zip(tmp_path / "many.npz", members), "3,002 members")
    assert "m1" not in message


@pytest.mark.parametrize(
    ("name", "match"),
    [("notes.txt", "unexpected keys \\['notes.txt'\\]"), ("evil\nkey.npy", "unexpected keys"), ("x/", "unexpected")],
)
def test_odd_member_names_are_refused(tmp_path: Path, name: str, match: str) -> None:
    refused(write_zip(tmp_path / "odd.npz", good_members() | {name: b"hello"}), match)


def test_a_duplicated_member_is_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "dup.npz", good_members())
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "a") as zf:
        zf.writestr("y.npy", good_members()["y.npy"])
    refused(path, "holds 'y' twice")


def test_other_zip_compressions_still_load(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "bz.npz", good_members(), zipfile.ZIP_BZIP2)
    assert sk.data.load(path).sizes() == {"train": 32, "val": 4, "test": 4}


def test_a_header_declaring_a_huge_shape_is_refused_before_reading(tmp_path: Path) -> None:
    members = good_members() | {"x.npy": npy_bytes((10**12, 10), "<f8", bytes(16))}
    message = refused(write_zip(tmp_path / "liar.npz", members), "declares")
    assert "80,000,000,000,000 bytes" in message and "holds 16 bytes" in message


def test_a_garbled_header_is_unreadable(tmp_path: Path) -> None:
    members = good_members() | {"x.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': <f8'}   \n"}
    refused(write_zip(tmp_path / "garbled.npz", members), "not a readable .npz")


def bomb(path: Path, rows: int, cols: int) -> Path:
    """A small deflated .npz whose x (honest header, zeros) inflates to rows x cols float64."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as fh:
            header = npy_bytes((rows, cols), "<f8", b"")
            fh.write(header)
            chunk, left = bytes(1 << 20), rows * cols * 8
            while left > 0:
                fh.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
        import io

        buf = io.BytesIO()
        np.save(buf, np.arange(rows) % 2)
        zf.writestr("y.npy", buf.getvalue())
    return path


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, pathlib, resource, sys
    import sklearn.model_selection, torch  # imported before measuring
    from slimkit.core.errors import DataError
    from slimkit.data.files import load_npz
    import gc; gc.collect()
    with open("/proc/self/statm") as fh:  # resident memory now, in kB
        before = int(fh.read().split()[1]) * resource.getpagesize() // 1024
    try:
        data = load_npz(pathlib.Path(sys.argv[1]))
        outcome = "loaded " + repr(data)
    except DataError as exc:
        outcome = "DataError: " + str(exc)
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so it can hold the (larger) parent's peak
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    grew = (hwm - before) / 1024
    print(json.dumps({"outcome": outcome, "grew_mb": grew}))
    """
)


def peak(path: Path, **env: str) -> tuple[str, float]:
    """Load ``path`` in a fresh process: (outcome, peak resident memory minus that before loading, MB)."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["outcome"], result["grew_mb"]


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in kB is Linux's")
def test_a_zip_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    path = bomb(tmp_path / "bomb.npz", 1_000_000, 50)  # 400 MB of zeros in under 1 MB
    assert path.stat().st_size < 2_000_000
    outcome, grew = peak(path, SLIMKIT_MAX_DATA_BYTES="100M")
    assert outcome.startswith("DataError: ") and "\n" not in outcome, outcome
    assert "SLIMKIT_MAX_DATA_BYTES" in outcome and "over the limit of 104.9 MB" in outcome
    assert grew < 50, f"peak memory grew by {grew:.0f} MB"


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in kB is Linux's")
def test_loading_float64_peaks_at_the_source_plus_float32_tensors(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(250_000, 100))  # 200 MB of float64
    path = saved(tmp_path, x=x, y=np.arange(len(x)) % 10)
    del x
    outcome, grew = peak(path)
    assert outcome.startswith("loaded Dataset('data', train=200000, val=25000, test=25000"), outcome
    # 200 MB read + 100 MB of float32 tensors + one 32 MB chunk; copying per step took ~560 MB
    assert grew < 380, f"peak memory grew by {grew:.0f} MB"


def test_the_memory_limit_defaults_to_half_the_available_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert files.available_memory() > 0
    monkeypatch.delenv(files.LIMIT_ENV, raising=False)
    monkeypatch.setattr(files, "available_memory", lambda: 1_000)
    path = saved(tmp_path, x=X, y=Y)
    refused(path, "half the available memory.*SLIMKIT_MAX_DATA_BYTES=<bytes>")
    refused(path, r"over the limit of 100 bytes \(max_bytes=100\)", max_bytes=100)
    monkeypatch.setenv(files.LIMIT_ENV, "1G")
    assert sk.data.load(path).num_classes == 2
    monkeypatch.setenv(files.LIMIT_ENV, "lots")
    refused(path, "SLIMKIT_MAX_DATA_BYTES='lots' is not a size")


def test_cli_train_on_a_bad_npz_exits_2_before_training(tmp_path: Path, cli: CliRun) -> None:
    path = saved(tmp_path, x=X, y=np.r_[Y[:-1], 10**6])
    code, out, err = cli("train", "-m", "seed_cnn", "-d", path, "-o", tmp_path / "run", "--epochs", "1")
    assert code == 2 and "holds label 1000000" in out + err
    assert "Traceback" not in out + err and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- property
DTYPES = st.sampled_from(
    ["float16", "float32", "float64", "int8", "uint8", "int32", "int64", "uint64", "bool", "complex64", "U3", "S2"]
)


@st.composite
def datasets(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """Random dtypes, shapes and values; the simplest draws (what hypothesis favours) are valid."""
    rows = draw(st.sampled_from([20, 30, 10, 11, 9, 3, 1, 0]))
    x_shape = (rows, *draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=draw(st.sampled_from([1, 1, 0])))))
    if draw(st.integers(0, 7)) == 7:
        x_shape = x_shape[: draw(st.integers(0, len(x_shape)))]
    x_dtype = np.dtype(draw(st.one_of(st.sampled_from(["float32", "float64", "uint8"]), DTYPES)))
    finite = x_dtype.kind == "f" and draw(st.integers(0, 3)) < 3
    elements = st.floats(-1e3, 1e3, width=8 * min(x_dtype.itemsize, 4)) if finite else None
    y_rows = rows if draw(st.integers(0, 5)) < 5 else draw(st.integers(0, 30))
    arrays = {
        "x": draw(hnp.arrays(x_dtype, x_shape, elements=elements)),
        "y": draw(
            st.one_of(
                hnp.arrays(np.int64, (y_rows,), elements=st.integers(0, 3)).map(lambda y: (y + np.arange(len(y))) % 4),
                hnp.arrays(np.int64, (y_rows,), elements=st.integers(-(2**40), 2**40)),
                hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=2, max_side=30)),
            )
        ),
    }
    if draw(st.integers(0, 3)) == 3:
        size = draw(st.integers(0, 5))
        arrays["classes"] = draw(st.one_of(hnp.arrays("U3", (size,)), hnp.arrays(DTYPES, (size,))))
    return arrays


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(arrays=datasets())
def test_any_small_npz_loads_cleanly_or_is_a_data_error(arrays: dict[str, np.ndarray]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.npz"
        np.savez(path, **arrays)
        try:
            data = load_npz(path)
        except DataError as exc:
            assert "\n" not in str(exc)
            return
    assert data.num_classes >= 2
    for x, y in data.splits.values():
        assert len(x) == len(y) > 0
        assert x.dtype in (torch.float32, torch.long) and y.dtype == torch.long
        assert 0 <= int(y.min()) and int(y.max()) < data.num_classes
        if x.dtype == torch.float32:
            assert torch.isfinite(x).all()
