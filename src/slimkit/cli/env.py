"""``slimkit env``: versions, threads and CPU features, for bug reports and benchmarks."""

from __future__ import annotations

import importlib.metadata
import platform

from slimkit.cli import app
from slimkit.cli.common import console

PACKAGES = (
    "torch",
    "numpy",
    "safetensors",
    "scikit-learn",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "openvino",
    "keras",
    "optuna",
)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "asimddp")


def environment() -> dict[str, object]:
    """What is installed and what the CPU offers, without importing optional packages."""
    import torch

    import slimkit
    from slimkit import data, zoo
    from slimkit.core.hardware import cpu_flags, simd_channels
    from slimkit.io.onnx import RUNTIME_NAMES, runtimes

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    flags = [f for f in CPU_FLAGS if f in cpu_flags()]
    return {
        "slimkit": slimkit.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
        "runtimes (--runtime)": ", ".join(runtimes()) or f"none: install one of {', '.join(RUNTIME_NAMES)}",
        "torch threads": torch.get_num_threads(),
        "torch cpu capability": torch.backends.cpu.get_cpu_capability(),
        "cpu flags": " ".join(flags) or "unknown",
        "SIMD channel block (round_to auto)": simd_channels(),
        "datasets": ", ".join(data.names()),
        "models": ", ".join(zoo.list_models()),
    }


@app.command("env")
def env_command() -> None:
    """Show versions, threads and CPU features (paste this into bug reports)."""
    for key, value in environment().items():
        console.print(f"[bold]{key:>22}[/bold]  {value}")
