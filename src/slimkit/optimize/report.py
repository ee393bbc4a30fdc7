"""A self-contained ``report.html`` for an optimization run: plots (matplotlib PNGs embedded as
base64, no scripts, no external files) and tables of every step and of the test before / after."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimkit.core.files import write_text_atomic
from slimkit.core.optional import require

if TYPE_CHECKING:
    from slimkit.optimize.run import OptimizeResult

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}td,th{border:1px solid #ccc;padding:.25rem .5rem}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#176c2f;font-weight:600}.bad{color:#b00020;font-weight:600}img{max-width:100%}figure{margin:0}figcaption{font-size:.8rem;color:#555}
.fig{display:flex;flex-wrap:wrap;gap:1rem}.note{color:#555}
"""


def _png(fig: Any, caption: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    c = html.escape(caption)
    return f'<figure><img alt="{c}" src="data:image/png;base64,{data}"><figcaption>{c}</figcaption></figure>'


def _plt() -> Any:
    mpl = require("matplotlib", extra="report")
    mpl.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def pareto_figure(result: OptimizeResult, cost: str) -> str:
    """Validation metric vs a cost (share of the original): every candidate, the front, the choice."""
    plt = _plt()
    m = result.target.metric
    scale, unit = _axis(m)
    base_cost = result.base_val["costs"].get(cost)
    base_metric = result.base_val["metrics"][m]
    pts = [(c, c.costs.get(cost)) for c in result.candidates if c.costs.get(cost) is not None]
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    ax.scatter([1.0], [scale * base_metric], marker="s", color="black", label="original", zorder=3)
    ok = [(v / base_cost, scale * c.metrics[m]) for c, v in pts if c.quality_ok]
    bad = [(v / base_cost, scale * c.metrics[m]) for c, v in pts if not c.quality_ok]
    if ok:
        ax.scatter(*zip(*ok, strict=True), color="tab:blue", alpha=0.7, label="candidates")
    if bad:
        ax.scatter(*zip(*bad, strict=True), color="tab:red", marker="x", label="broke the constraint")
    from slimkit.optimize.pipeline import pareto_front

    front_ids = set(pareto_front(result.candidates, m, cost, result.target.higher_is_better))
    front = sorted((v / base_cost, scale * c.metrics[m]) for c, v in pts if c.id in front_ids)
    if front:
        ax.plot(*zip(*front, strict=True), color="tab:blue", lw=1, ls="--", label="Pareto front")
    chosen = result.chosen_candidate
    if chosen.costs.get(cost) is not None:
        ax.scatter(
            [chosen.costs[cost] / base_cost],
            [scale * chosen.metrics[m]],
            marker="*",
            s=260,
            color="gold",
            edgecolor="black",
            zorder=4,
            label="chosen",
        )
    limits = result.target.limits(result.base_val["costs"])
    if cost in limits:
        ax.axvline(limits[cost] / base_cost, color="gray", ls=":", label="budget")
    if result.target.max_drop is not None:
        worst = scale * base_metric - result.target.max_drop * (1 if result.target.score({m: 1}) > 0 else -1)
        ax.axhline(worst, color="tab:red", ls=":", lw=1, label="max drop")
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    lo, hi = ax.get_xlim()
    ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0) if lo <= t <= hi]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"{cost} (share of the original, log scale)")
    ax.set_ylabel(f"validation {m}{unit}")
    ax.set_title(f"{m} vs {cost}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig, f"Validation {m} vs {cost}: every candidate, the Pareto front and the chosen model")


def _axis(metric: str) -> tuple[float, str]:
    """(scale, unit label) of a metric on a plot axis: shares in percent."""
    from slimkit.task import in_points

    return (100.0, " (%)") if in_points(metric) else (1.0, "")


def _sensitivity_curves(curves: dict[str, Any], sens: Any, start: float, xlabel: str, what: str) -> str:
    """The validation metric of each group/layer alone at several strengths (``start``: untouched)."""
    plt = _plt()
    m = sens.metric
    scale, unit = _axis(m)
    base = sens.base[m]
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for name, g in curves.items():
        ax.plot([start, *g["ratios"]], [scale * base, *(scale * a for a in g[m])], marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"validation {m}{unit}")
    if start > 0:
        ax.invert_xaxis()
    ax.set_title(f"per-layer {what}")
    ax.grid(alpha=0.3)
    if len(curves) <= 16:
        ax.legend(fontsize=6, ncol=2)
    return _png(fig, f"Per-layer {what}: validation {m} with one group or layer changed alone")


def sensitivity_figure(result: OptimizeResult) -> str:
    sens = result.sensitivity
    xlabel = "share of the group's units removed (alone, no fine-tuning)"
    return _sensitivity_curves(sens.groups, sens, 0.0, xlabel, "sensitivity")


def lowrank_figure(result: OptimizeResult) -> str:
    sens = result.sensitivity
    xlabel = "share of the layer's rank kept (SVD, alone, no fine-tuning)"
    return _sensitivity_curves(sens.layers, sens, 1.0, xlabel, "low-rank sensitivity")


def widths_figure(result: OptimizeResult) -> str:
    plt = _plt()
    names = list(result.widths_before)
    fig, ax = plt.subplots(figsize=(max(5.2, 0.45 * len(names)), 3.8))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [result.widths_before[n] for n in names], 0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [result.widths_after.get(n, 0) for n in names], 0.4, label="after")
    ax.set_xticks(list(xs), names, rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("width (channels / units, log)")
    ax.set_title("per-layer widths")
    ax.legend(fontsize=7)
    return _png(fig, "Per-layer widths before and after")


def cost_figure(result: OptimizeResult) -> str:
    plt = _plt()
    b, a = result.before, result.after
    keys = [k for k in b.latency_ms if k in a.latency_ms]
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(2.6 * (1 + len(keys)), 3.2))
    axes = list(axes) if len(keys) else [axes]
    labels = ["original", "optimized"]
    axes[0].bar(labels, [b.bytes / 1024, a.bytes / 1024], color=["gray", "tab:green"])
    axes[0].set_title(f"file size (KB), {b.bytes / a.bytes:.1f}x smaller", fontsize=8)
    for ax, k in zip(axes[1:], keys, strict=True):
        ax.bar(labels, [b.latency_ms[k], a.latency_ms[k]], color=["gray", "tab:green"])
        ax.set_title(f"{k} (ms), {b.latency_ms[k] / a.latency_ms[k]:.1f}x faster", fontsize=8)
    for ax in axes:
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _png(fig, "File size and latency on the test split: original vs optimized")


def _speed_html(sp: dict[str, Any]) -> str:
    """The paired latencies of every runtime found: original vs optimized on the same runtime."""
    from slimkit.io.onnx import RUNTIME_NAMES

    files = [k for k in next(iter(sp["runtimes"].values())) if k != "original"]
    rows = [
        [html.escape(RUNTIME_NAMES[rt]), f"{row['original']:.2f} ms"]
        + [f"{row[f]:.2f} ms (<b>{row['original'] / row[f]:.2f}x</b>)" if row[f] else "cannot run" for f in files]
        for rt, row in sp["runtimes"].items()
    ]
    best = sp["best"]
    return (
        f"<p>Batch {sp['batch']}, each runtime timing the optimized files taking turns with the fp32 ONNX "
        "original (speed-ups against the original on the same runtime):</p>"
        + _table(["runtime", "original fp32 ONNX", *(f"optimized {f}" for f in files)], rows)
        + f"<p>Fastest: the {html.escape(best['file'])} on {html.escape(RUNTIME_NAMES[best['runtime']])}, "
        f"<b>{best['speedup']:.2f}x</b> the original's throughput there. File "
        f"{sp['original_fp32_onnx_bytes']:,} -> {sp['optimized_onnx_bytes']:,} bytes "
        f"({html.escape(sp['deployed'])}, <b>{sp['smaller']:.1f}x</b> smaller).</p>"
    )


def _precision_html(q: dict[str, Any]) -> str:
    """The per-layer choice of a mixed-precision int8 file: each node's output error and latency when
    it alone stays in float, and the precision it got."""
    rows = [
        [html.escape(name), html.escape(d["op"]), f"{d['error_if_float']:.3g}", f"{d.get('ms_if_float', 0):+.3f}"]
        + [html.escape(d["precision"])]
        for name, d in q["layers"].items()
    ]
    share = "" if q.get("latency_share") is None else f", latency {q['latency_share']:.2f}x of the fp32 file's"
    return f"<h2>Mixed precision (int8 / float per layer{share})</h2>" + _table(
        ["node", "op", "output error if float", "ms if float", "precision"], rows, numeric_from=2
    )


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for r in rows:
        cells = []
        for i, v in enumerate(r):
            cls = ' class="n"' if i >= numeric_from else ""
            cells.append(f"<td{cls}>{v}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(result: OptimizeResult) -> str:
    """The report as one HTML string (images inline)."""
    e = html.escape
    m = result.target.metric
    base = result.base_val
    met = '<span class="ok">met</span>' if result.target_met else '<span class="bad">NOT met</span>'
    parts = [
        f"<h1>slimkit optimize: {e(result.before.model)} on {e(result.before.data)}</h1>",
        f"<p>Target: {e(str(result.target))}. Target {met} on the validation split. "
        f"Recipe: {e(str(result.recipe))}. {len(result.candidates)} candidates "
        f"in {result.seconds:.0f} s.</p>",
    ]
    parts += [f'<p class="note">{e(n)}</p>' for n in result.notes]
    parts.append("<h2>Test split, measured once at the end</h2>")
    cmp = result.comparison
    parts.append(_table(["measure", "original", "optimized", "change"], [[e(c) for c in row] for row in cmp._rows()]))
    if result.speed:
        parts.append(_speed_html(result.speed))
    if result.quantize and result.quantize.get("layers"):
        parts.append(_precision_html(result.quantize))
    figs = [pareto_figure(result, "macs"), pareto_figure(result, "bytes")]
    if any(c.costs.get("latency") is not None for c in result.candidates):
        figs.append(pareto_figure(result, "latency"))
    parts.append("<h2>Pareto front (validation)</h2><div class='fig'>" + "".join(figs) + "</div>")
    figs = []
    if result.sensitivity is not None and result.sensitivity.groups:
        figs.append(sensitivity_figure(result))
    if result.sensitivity is not None and result.sensitivity.layers:
        figs.append(lowrank_figure(result))
    if result.widths_before:
        figs.append(widths_figure(result))
    if figs:
        parts.append("<h2>Sensitivity and widths</h2><div class='fig'>" + "".join(figs) + "</div>")
    for a in result.allocations:
        if "predicted_loss" in a:
            parts.append(
                f"<p>Allocation ({e(a['allocation'])}"
                f"{', one width per config field' if a.get('config_widths') else ''}): predicted validation-loss "
                f"increase {a['predicted_loss']:.3f}, uniform ratios would give {a['uniform_predicted_loss']:.3f}.</p>"
            )
            rows = [[e(p), f"{r:.3f}", f"{a['uniform_ratios'].get(p, 0):.3f}"] for p, r in a["ratios"].items()]
            parts.append(_table(["group (producer)", "ratio (allocated)", "ratio (uniform)"], rows))
    parts.append("<h2>Size and latency (test)</h2><div class='fig'>" + cost_figure(result) + "</div>")
    rows = []
    scale, unit = _axis(m)
    for c in result.candidates:
        drop = result.target.drop(c.metrics, base["metrics"])
        status = "chosen" if c.id == result.chosen else ("accepted" if c.accepted else "rejected")
        qual = '<span class="ok">ok</span>' if c.quality_ok else '<span class="bad">broken</span>'
        costs = ", ".join(f"{k} {'ok' if v else 'no'}" for k, v in c.cost_ok.items())
        lat = "" if c.costs.get("latency") is None else f"{c.costs['latency']:.2f}"
        share = [f"{c.costs[k] / base['costs'][k]:.3f}" for k in ("macs", "params", "bytes")]
        rows.append(
            [
                str(c.id),
                e(c.step),
                f"{scale * c.metrics[m]:.4g}",
                f"{-drop:+.4g}",
                *share,
                lat,
                qual,
                e(costs),
                e(status),
                f"{c.seconds:.1f}",
                e(c.note),
            ]
        )
    parts.append("<h2>Every step and its effect (validation)</h2>")
    parts.append(
        _table(
            [
                "#",
                "step",
                f"{m}{unit}",
                "change",
                "MACs x",
                "params x",
                "file x",
                "latency ms",
                "quality",
                "budget",
                "status",
                "s",
                "note",
            ],
            rows,
        )
    )
    if result.trials:
        keys = sorted({k for t in result.trials for k in t.get("params", {})})
        rows = [
            [
                str(t["number"]),
                e(t["state"]),
                "" if t.get("value") is None else f"{scale * t['value']:.4g}",
                *(e(str(t.get("params", {}).get(k, ""))) for k in keys),
            ]
            for t in result.trials
        ]
        parts.append("<h2>Search trials</h2>" + _table(["trial", "state", f"val {m}{unit}", *keys], rows))
    title = f"slimkit optimize report: {e(result.before.model)}"
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def write_html(result: OptimizeResult, path: str | Path) -> Path:
    """Write :func:`render_html` atomically to ``path``."""
    return write_text_atomic(path, render_html(result), force=True)
