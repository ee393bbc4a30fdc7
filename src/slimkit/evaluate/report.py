"""The :class:`Report` of one evaluation, and :func:`compare` for before / after ratios."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from slimkit.core.files import write_text_atomic


@dataclasses.dataclass
class Report:
    """Quality and cost of one model on one data split. Round-trips through JSON."""

    model: str
    data: str
    split: str
    samples: int
    metrics: dict[str, float]
    confusion: list[list[int]]
    params: int
    macs: int | None
    bytes: int | None
    latency_ms: dict[str, float]
    env: dict[str, Any] = dataclasses.field(default_factory=dict)
    task: str = "classification"
    metric: str = "accuracy"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_json(self, path: str | Path | None = None, *, force: bool = False) -> str:
        """The report as JSON text; also written atomically to ``path`` when given (an existing file
        only with ``force``)."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_text_atomic(path, text + "\n", force=force)
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> Report:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def rows(self) -> list[tuple[str, str]]:
        """(name, formatted value) pairs in display order."""
        rows = [(k, _fmt_metric(k, v)) for k, v in self.metrics.items()]
        rows += [("params", f"{self.params:,}"), ("MACs", _fmt_int(self.macs)), ("file size", _fmt_bytes(self.bytes))]
        rows += [(f"latency {k}", f"{v:.2f} ms") for k, v in self.latency_ms.items()]
        return rows

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=f"{self.model} on {self.data} ({self.split}, {self.samples:,} samples)")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for name, value in self.rows():
            table.add_row(name, value)
        return table

    def __str__(self) -> str:
        width = max(len(n) for n, _ in self.rows())
        head = f"{self.model} on {self.data} ({self.split}, {self.samples:,} samples)"
        return "\n".join([head, *(f"  {n:<{width}}  {v}" for n, v in self.rows())])


def _fmt_metric(name: str, v: float) -> str:
    from slimkit.task import format_metric

    return format_metric(name, v)


def _change_key(name: str) -> str:
    from slimkit.task import in_points

    return f"{name} (points)" if in_points(name) else f"{name} (change)"


def _fmt_int(v: int | None) -> str:
    return "n/a" if v is None else f"{v:,}"


def _fmt_bytes(v: int | None) -> str:
    if v is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB"):
        if v < 1024 or unit == "GB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    raise AssertionError


class Comparison(dict):
    """Changes from one report to another (see :func:`compare`); prints as a before / after table."""

    def __init__(self, before: Report, after: Report) -> None:
        super().__init__(_changes(before, after))
        self.before, self.after = before, after

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=f"{self.before.model} -> {self.after.model}")
        for col in ("measure", "before", "after", "change"):
            table.add_column(col, justify="left" if col == "measure" else "right")
        for row in self._rows():
            table.add_row(*row)
        return table

    def __str__(self) -> str:
        rows = [("measure", "before", "after", "change"), *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows
        )

    def _rows(self) -> list[tuple[str, str, str, str]]:
        b, a = dict(self.before.rows()), dict(self.after.rows())
        keys = {_change_key(k): k for k in self.before.metrics}
        keys |= {"params x": "params", "MACs x": "MACs", "bytes x": "file size"}
        keys |= {f"latency {k} x": f"latency {k}" for k in self.before.latency_ms}
        rows = []
        for key, row in keys.items():
            if row in b and row in a:
                c = self.get(key)
                text = (
                    ""
                    if c is None
                    else (
                        f"{c:+.2f}"
                        if key.endswith("(points)")
                        else f"{c:+.4f}"
                        if key.endswith("(change)")
                        else f"{c:.2f}x"
                    )
                )
                rows.append((row, b[row], a[row], text))
        return rows


def compare(before: Report, after: Report) -> Comparison:
    """Changes from ``before`` to ``after``: metric differences, cost ratios after / before.

    A dict with keys ``"<metric> (points)"`` for metrics that are shares (accuracy, F1, mean IoU:
    differences x100), ``"<metric> (change)"`` for the others (AUC, RMSE, cosine) and ``"params x"``, ``"MACs x"``,
    ``"bytes x"``, ``"latency <key> x"`` for costs (below 1 means smaller or faster); printing it
    shows a before / after table.
    """
    return Comparison(before, after)


def _changes(before: Report, after: Report) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    from slimkit.task import in_points

    for k in before.metrics.keys() & after.metrics.keys():
        out[_change_key(k)] = (100 if in_points(k) else 1) * (after.metrics[k] - before.metrics[k])

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or a == 0 else b / a

    out["params x"] = ratio(before.params, after.params)
    out["MACs x"] = ratio(before.macs, after.macs)
    out["bytes x"] = ratio(before.bytes, after.bytes)
    for k in before.latency_ms.keys() & after.latency_ms.keys():
        out[f"latency {k} x"] = ratio(before.latency_ms[k], after.latency_ms[k])
    return out
