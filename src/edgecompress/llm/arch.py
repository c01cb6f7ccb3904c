"""Where a transformer's prunable projections are: its stack of decoder/encoder layers and, in each layer, the
Linear projections by their role (q, k, v, o, gate, up, down).

A family is recognised by the module names inside one layer, so every model that follows a family's naming
works (Llama, Mistral, Qwen2 and SmolLM share the Llama names; BERT, MiniLM and RoBERTa the BERT names). A
model that matches no family gets an error that lists the Linear modules of its layers, so the user sees what
was found.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from torch import nn

from edgecompress.errors import EdgeCompressError

ROLES = ("q", "k", "v", "o", "gate", "up", "down")  # forward order inside a layer
INPUT_GROUPS = {"q": "attn_in", "k": "attn_in", "v": "attn_in", "o": "o", "gate": "mlp_in", "up": "mlp_in",
                "down": "down"}  # projections that read the same input tensor share its statistics


@dataclass(frozen=True)
class Family:
    name: str
    roles: dict[str, str]  # role -> module name inside a layer
    kind: str  # "decoder" (causal LM) or "encoder"


FAMILIES = (
    Family("llama", {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                     "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
                     "down": "mlp.down_proj"}, "decoder"),
    Family("bert", {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                    "o": "attention.output.dense", "up": "intermediate.dense", "down": "output.dense"}, "encoder"),
)


@dataclass(frozen=True)
class Transformer:
    """A model's layer stack (``prefix``: its module name) and the family naming its projections."""

    model: nn.Module
    prefix: str
    layers: nn.ModuleList
    family: Family

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(r for r in ROLES if r in self.family.roles)

    def projections(self, i: int) -> dict[str, nn.Linear]:
        """Layer ``i``'s projections by role, in forward order."""
        layer = self.layers[i]
        return {r: layer.get_submodule(self.family.roles[r]) for r in self.roles}

    def name(self, i: int, role: str) -> str:
        """The projection's full module name in the model."""
        return f"{self.prefix}.{i}.{self.family.roles[role]}"

    def __len__(self) -> int:
        return len(self.layers)


def _layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The largest ModuleList whose children are all of one class (the repeated layers)."""
    stacks = [(n, m) for n, m in model.named_modules()
              if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1]
    return max(stacks, key=lambda s: sum(p.numel() for p in s[1].parameters()), default=None)


def _linears(layer: nn.Module) -> str:
    found = [f"{n} ({type(m).__name__} {tuple(m.weight.shape)})" for n, m in layer.named_modules()
             if hasattr(m, "weight") and getattr(m.weight, "ndim", 0) == 2]
    return ", ".join(found) or "none"


def transformer(model: nn.Module) -> Transformer:
    """The model's layer stack and projection family; an EdgeCompressError that lists what was found when the
    model is not a recognised transformer."""
    stack = _layer_stack(model)
    if stack is None:
        types = Counter(type(m).__name__ for m in model.modules())
        raise EdgeCompressError(
            f"{type(model).__name__} has no stack of repeated layers (module types: "
            f"{', '.join(f'{t} x{c}' for t, c in types.most_common(8))})", where="model",
            fix="language-model pruning needs a transformer with a ModuleList of decoder/encoder layers")
    prefix, layers = stack
    names = {n for n, m in layers[0].named_modules() if isinstance(m, nn.Linear)}
    for family in FAMILIES:
        if set(family.roles.values()) <= names:
            return Transformer(model, prefix, layers, family)
    raise EdgeCompressError(
        f"the projections of {type(layers[0]).__name__} (in {prefix}) are not recognised; its layers hold: "
        f"{_linears(layers[0])}", where="model",
        fix="known layouts: " + "; ".join(f"{f.name}: {', '.join(f.roles.values())}" for f in FAMILIES))
