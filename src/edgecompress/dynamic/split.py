"""Where a network can be cut into consecutive segments, and the segments themselves (torch.fx).

A split point is a node of the model's fx graph whose output is the only value that later nodes need from the
nodes up to it (a residual block's output, not the inside of the block): the model is then exactly
``segment_k(... segment_1(x))`` and an exit head can read that output. Split points are named by their fx node
(a module call is named like the module with ``_`` for ``.``: ``layers_2_relu2``).
"""

from __future__ import annotations

import torch
from torch import fx
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.measure.counts import layer_table


def trace(model: nn.Module, where: str) -> fx.GraphModule:
    """The model as an fx graph; a model fx cannot trace is refused with the reason."""
    try:
        return fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types (TraceError, TypeError, NotImplementedError ...)
        raise EdgeCompressError(f"the backbone has no usable split points: torch.fx cannot trace it "
                                f"({type(err).__name__}: {str(err).splitlines()[0]})", where=where,
                                fix="give a model whose forward has no data-dependent control flow") from None


def cut_points(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes after which the only live value is their own output, in execution order (inputs, the output and
    nodes that produce no tensor-like value excluded)."""
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((index[u] for u in n.users), default=index[n]) for n in nodes}
    cuts = []
    for i, node in enumerate(nodes[:-1]):
        if node.op not in ("call_module", "call_function", "call_method") or nodes[i + 1].op == "output":
            continue
        live = [n for n in nodes[: i + 1] if last_use[n] > i and n.op != "get_attr"]
        if live == [node]:
            cuts.append(node)
    return cuts


def prefix_macs(model: nn.Module, gm: fx.GraphModule, example: torch.Tensor) -> dict[str, int]:
    """MACs of the model up to and including each node (Conv/Linear MACs of the module calls before it)."""
    per_module = {row["name"]: row["macs"] for row in layer_table(model, example)}
    total, prefix = 0, {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            total += per_module.get(str(node.target), 0)
        prefix[node.name] = total
    return prefix


def resolve_points(gm: fx.GraphModule, wanted: list[str], where: str) -> list[str]:
    """Node names of ``wanted`` (node names, or module names of module calls) in execution order; one that is
    not a split point is refused with the ones that are."""
    cuts = cut_points(gm)
    by_name = {n.name: n.name for n in cuts} | {str(n.target): n.name for n in cuts if n.op == "call_module"}
    bad = [w for w in wanted if w not in by_name]
    if bad:
        raise EdgeCompressError(f"not usable as split points: {bad}", where=where,
                                fix=f"use some of: {', '.join(n.name for n in cuts)}")
    order = [n.name for n in cuts]
    return sorted({by_name[w] for w in wanted}, key=order.index)


def segments(gm: fx.GraphModule, points: list[str]) -> list[fx.GraphModule]:
    """The model cut after each of ``points`` (node names in execution order): ``len(points) + 1`` modules, each
    taking the previous one's output (the first: the model's input)."""
    nodes = list(gm.graph.nodes)
    bounds = [i for i, n in enumerate(nodes) if n.name in points]
    parts, start, value_of = [], 0, None
    for end in [*bounds, len(nodes) - 1]:
        graph, env = fx.Graph(), {}
        inp = graph.placeholder("x")

        def lookup(n: fx.Node, graph=graph, env=env) -> fx.Node:  # parameters read in an earlier segment too
            if n not in env and n.op == "get_attr":
                env[n] = graph.get_attr(n.target)
            return env[n]

        if value_of is not None:
            env[value_of] = inp
        for node in nodes[start:end + 1]:
            if node.op == "placeholder":
                env[node] = inp
            elif node.op == "output":
                graph.output(fx.node.map_arg(node.args[0], lookup))
            else:
                env[node] = graph.node_copy(node, lookup)
        if nodes[end].op != "output":
            graph.output(env[nodes[end]])
        parts.append(fx.GraphModule(gm, graph))
        start, value_of = end + 1, nodes[end]
    return parts
