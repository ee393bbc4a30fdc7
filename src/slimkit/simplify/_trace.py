"""Small tracing helpers shared by the simplification passes.

Two views of a model are used: a ``torch.fx`` graph (who reads whose output, for the exact
folding passes) and an eager run with forward hooks (the shapes every leaf layer sees, for
shape repair). Neither changes the model.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import fx, nn

from slimkit.core.errors import first_line
from slimkit.core.model import eval_mode

PASS_THROUGH = (nn.Identity, nn.Dropout)  # no-ops at inference


def fx_graph(model: nn.Module) -> tuple[fx.Graph | None, str]:
    """The ``torch.fx`` graph of ``model`` (torch.nn layers kept as calls), or None and the reason."""
    try:
        return fx.Tracer().trace(model), ""
    except Exception as exc:  # noqa: BLE001  (any tracing failure means "cannot analyse", reported)
        first = first_line(exc)
        return None, f"torch.fx cannot trace the model ({first[:120]})"


def module_calls(graph: fx.Graph) -> dict[str, list[fx.Node]]:
    """Qualified module name -> the graph nodes that call it."""
    calls: dict[str, list[fx.Node]] = defaultdict(list)
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)].append(node)
    return calls


def is_pass_through(node: Any, model: nn.Module) -> bool:
    return (
        isinstance(node, fx.Node)
        and node.op == "call_module"
        and isinstance(model.get_submodule(str(node.target)), PASS_THROUGH)
    )


def producer(node: fx.Node, model: nn.Module) -> tuple[Any, list[fx.Node]]:
    """The value feeding ``node`` (its single argument), looking through Identity/Dropout calls.

    Returns the source and the pass-through nodes crossed on the way.
    """
    crossed: list[fx.Node] = []
    src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
    while is_pass_through(src, model) and len(src.args) == 1:
        crossed.append(src)
        src = src.args[0]
    return src, crossed


def describe(node: Any) -> str:
    if not isinstance(node, fx.Node):
        return "a constant"
    if node.op == "call_module":
        return f"layer {node.target}"
    if node.op == "placeholder":
        return "the model input"
    return f"{getattr(node.target, '__name__', node.target)} ({node.op})"


def leaf_shapes(model: nn.Module, example: torch.Tensor) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(name, input shape, output shape) of every tensor-in/tensor-out leaf call, in execution order."""
    seen: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    handles = []
    for name, m in model.named_modules():
        if name and not list(m.children()):

            def hook(_m: nn.Module, args: tuple, out: Any, name: str = name) -> None:
                if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                    seen.append((name, tuple(args[0].shape), tuple(out.shape)))

            handles.append(m.register_forward_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return seen
