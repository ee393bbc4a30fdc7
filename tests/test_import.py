import subprocess
import sys


def test_import_does_not_pull_heavy_optional_packages() -> None:
    code = (
        "import sys, slimkit, slimkit.data, slimkit.zoo, slimkit.train, slimkit.evaluate, slimkit.io, slimkit.cli\n"
        "heavy = ('onnxruntime', 'onnx', 'onnxscript', 'keras', 'optuna', 'matplotlib')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import slimkit imported {out}"


def test_public_surface() -> None:
    import slimkit as sk

    for name in ("load", "save", "evaluate", "export", "compare", "Report", "zoo", "data", "train"):
        assert hasattr(sk, name)
