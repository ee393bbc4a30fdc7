"""What this CPU can do, for choices that depend on it (int8 ranges, SIMD-friendly widths)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

_X86 = ("x86_64", "amd64", "i386", "i686")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def is_x86() -> bool:
    return platform.machine().lower() in _X86


def has_vnni() -> bool:
    """Whether this CPU has VNNI int8 dot-product instructions (non-x86 CPUs count as having them)."""
    flags = cpu_flags()
    if not is_x86() or not flags:
        return True  # unknown: keep full-range weights; the accuracy check guards the result
    return "avx512_vnni" in flags or "avx_vnni" in flags


def simd_channels() -> int:
    """The channel block ONNX Runtime's CPU convolutions work in on this machine.

    Its x86 kernels (MLAS "NCHWc") process 16 channels at a time with AVX-512 and 8 with AVX2 and
    pad a smaller count up to the block, so a pruned width that is not a multiple of the block
    saves fewer operations than it seems. Elsewhere 8 is a safe choice.
    """
    return 16 if is_x86() and "avx512f" in cpu_flags() else 8
