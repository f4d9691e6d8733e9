"""Sign templates S in {-1, 0, +1} for a network's weights (paper Sec. 2).

Only weight matrices and kernels (parameters named ``*weight`` with two or more dimensions) carry a
template; biases and normalisation scales stay free. ``0`` in a template means "unconstrained": the
projection can never fire there, which is how fluid runs share one population tensor with frozen ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from common.errors import UserError

Templates = dict[str, Tensor]


def constrained_parameters(network: nn.Module) -> dict[str, nn.Parameter]:
    """Weights that take a sign template: Linear/Conv weights (and population stacks of them)."""
    return {name: p for name, p in network.named_parameters() if name.endswith("weight") and p.dim() >= 2}


def sign_of(tensor: Tensor) -> Tensor:
    """Sign with 0 mapped to +1: torch.sign(0) = 0 would leave that weight unconstrained forever."""
    return torch.where(tensor < 0, -1.0, 1.0).to(tensor.dtype)


def random_template(network: nn.Module, source_state: Mapping[str, Tensor] | None = None) -> Templates:
    """RAND-Polarity / Freeze-uninformed: the network's own initial signs."""
    return {name: sign_of(p.detach()) for name, p in constrained_parameters(network).items()}


def positive_template(network: nn.Module, source_state: Mapping[str, Tensor] | None = None) -> Templates:
    """All +1: with the `zero` reset rule this is projected descent onto non-negative weights."""
    return {name: torch.ones_like(p) for name, p in constrained_parameters(network).items()}


def informed_xor_template(network: nn.Module, source_state: Mapping[str, Tensor] | None = None) -> Templates:
    """XOR-informed (paper Sec. 3.1): hidden layer keeps its own signs; the output weight of hidden unit j
    gets sign(w1j * w2j), w1j and w2j being its weights from x1 and x2 (positive when the unit responds
    to x1 and x2 of the same sign, the XOR-positive class)."""
    params = dict(network.named_parameters())
    if "hidden.weight" not in params or "output.weight" not in params:
        raise UserError("template 'informed' needs the 2-layer MLP (model=polarity_mlp); use template random or transfer")
    hidden = params["hidden.weight"].detach()  # (..., H, in)
    templates = random_template(network)
    unit_sign = sign_of(hidden[..., 0] * hidden[..., 1])  # (..., H)
    templates["output.weight"] = unit_sign.unsqueeze(-2).expand_as(params["output.weight"]).clone()
    return templates


def transfer_template(network: nn.Module, source_state: Mapping[str, Tensor] | None = None) -> Templates:
    """IN-Polarity: signs of the source network's weights where shapes match (magnitudes untouched);
    layers with no matching source weight (a fresh head) keep their own signs and are reported by
    :func:`transferred_names`."""
    if source_state is None:
        raise UserError("template 'transfer' needs a source network: set polarity.source (a checkpoint or a source dataset)")
    templates = random_template(network)
    for name, template in templates.items():
        source = source_state.get(name)
        if source is not None and source.shape == template.shape:
            templates[name] = sign_of(source.detach().to(template.device, template.dtype))
    return templates


def transferred_names(network: nn.Module, source_state: Mapping[str, Tensor]) -> list[str]:
    """Constrained weights that have a same-shaped counterpart in the source network."""
    return [n for n, p in constrained_parameters(network).items() if n in source_state and source_state[n].shape == p.shape]


TEMPLATES: dict[str, Callable[..., Templates]] = {
    "random": random_template,
    "positive": positive_template,
    "informed": informed_xor_template,
    "transfer": transfer_template,
}


def make_template(kind: str, network: nn.Module, source_state: Mapping[str, Tensor] | None = None) -> Templates:
    if kind not in TEMPLATES:
        raise UserError(f"unknown sign template '{kind}' (valid: {', '.join(TEMPLATES)})")
    return TEMPLATES[kind](network, source_state)


@torch.no_grad()
def align_to_template(network: nn.Module, templates: Templates) -> None:
    """W <- |W| * S before the first step (else the first projection resets about half the weights).
    Entries with S = 0 (free) are left as they are."""
    for name, param in constrained_parameters(network).items():
        if name in templates:
            template = templates[name].to(param.device, param.dtype)
            param.copy_(torch.where(template == 0, param, param.abs() * template))


@torch.no_grad()
def load_matching(network: nn.Module, source_state: Mapping[str, Tensor]) -> list[str]:
    """IN-Weight: copy every source tensor whose name and shape match (all but a fresh head)."""
    own = network.state_dict()
    copied = [n for n, t in source_state.items() if n in own and own[n].shape == t.shape]
    network.load_state_dict({n: source_state[n] for n in copied}, strict=False)
    return copied
