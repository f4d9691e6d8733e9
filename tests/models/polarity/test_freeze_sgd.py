"""Freeze-SGD: after any optimiser step every constrained weight has its template's sign."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.errors import UserError
from models.polarity.freeze_sgd import RESET_RULES, SignConstraint
from models.polarity.networks import PopulationMLP, SmallCNN
from models.polarity.sign_templates import align_to_template, random_template


def _template_for(net: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """A template whose signs are independent of the current weights (so projections really fire)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.where(torch.rand(p.shape, generator=generator) < 0.5, -1.0, 1.0)
        for name, p in net.named_parameters()
        if name.endswith("weight") and p.dim() >= 2
    }


@pytest.mark.parametrize("reset", sorted(RESET_RULES))
@pytest.mark.parametrize("optimizer_class", [torch.optim.SGD, torch.optim.Adam])
def test_signs_follow_the_template_after_many_random_steps(reset: str, optimizer_class) -> None:
    torch.manual_seed(0)
    net = SmallCNN(in_channels=1, num_classes=3, image_size=8, channels=(4,), hidden=6)
    templates = _template_for(net)
    align_to_template(net, templates)
    constraint = SignConstraint(templates, reset=reset, eps=1e-3, seed=0)
    optimizer = optimizer_class(net.parameters(), lr=0.05)
    constraint.attach(optimizer, net)
    params = dict(net.named_parameters())
    fired = 0
    for _ in range(30):
        optimizer.zero_grad()
        loss = (net(torch.randn(5, 1, 8, 8)) * torch.randn(5, 3)).sum()  # a random direction every step
        loss.backward()
        optimizer.step()
        fired += constraint.last_violations
        for name, template in templates.items():
            assert torch.all(params[name] * template >= 0), f"{name} crossed its template under {reset}"
    assert fired > 0, "the random steps never pushed a weight across its sign: the test proves nothing"
    for name, template in templates.items():
        if reset in ("posRand", "posCon", "flip"):
            assert torch.all(torch.sign(params[name]) == template), f"{reset} must leave no zero or wrong sign"


def test_the_projection_fires_and_each_rule_resets_as_documented() -> None:
    weight = torch.tensor([[0.5, -0.2, 0.3, -0.4]])
    template = torch.tensor([[1.0, 1.0, -1.0, -1.0]])  # entries 1 and 2 violate
    expected = {
        "zero": torch.tensor([[0.5, 0.0, 0.0, -0.4]]),
        "flip": torch.tensor([[0.5, 0.2, -0.3, -0.4]]),
        "posCon": torch.tensor([[0.5, 0.01, -0.01, -0.4]]),
    }
    for reset in RESET_RULES:
        layer = nn.Linear(4, 1)
        layer.weight.data.copy_(weight)
        count = SignConstraint({"weight": template}, reset=reset, eps=0.01).project_(layer)
        assert count == 2
        if reset == "posRand":
            new = layer.weight.data[0]
            assert 0 < new[1] <= 0.01 and -0.01 <= new[2] < 0
            assert new[0] == 0.5 and new[3] == -0.4
        else:
            torch.testing.assert_close(layer.weight.data, expected[reset])


def test_biases_are_never_touched() -> None:
    net = PopulationMLP(num_runs=3, hidden=8)
    biases = {n: p.detach().clone() for n, p in net.named_parameters() if n.endswith("bias")}
    templates = {n: -torch.sign(p.detach()) for n, p in net.named_parameters() if n.endswith("weight")}
    assert SignConstraint(templates, reset="zero").project_(net) > 0
    for name, bias in biases.items():
        torch.testing.assert_close(dict(net.named_parameters())[name], bias)


def test_zero_in_a_template_leaves_that_weight_free() -> None:
    layer = nn.Linear(2, 1, bias=False)
    layer.weight.data = torch.tensor([[-1.0, -1.0]])
    SignConstraint({"weight": torch.tensor([[0.0, 1.0]])}, reset="zero").project_(layer)
    torch.testing.assert_close(layer.weight.data, torch.tensor([[-1.0, 0.0]]))


def test_saved_generator_state_makes_resumed_resets_identical() -> None:
    def violate(layer: nn.Linear) -> None:
        layer.weight.data.fill_(-1.0)

    template = {"weight": torch.ones(1, 50)}
    first, layer = SignConstraint(template, seed=3), nn.Linear(50, 1)
    violate(layer)
    first.project_(layer)
    state = first.state_dict()
    violate(layer)
    first.project_(layer)
    expected = layer.weight.detach().clone()

    resumed = SignConstraint(template, seed=3)
    resumed.load_state_dict(state)
    violate(layer)
    resumed.project_(layer)
    torch.testing.assert_close(layer.weight.data, expected)


def test_unknown_reset_rule_is_a_user_error() -> None:
    with pytest.raises(UserError, match="reset rule 'bogus'.*posRand"):
        SignConstraint({"weight": torch.ones(1, 1)}, reset="bogus")


def test_random_template_is_each_runs_own_init_sign_with_zero_as_plus() -> None:
    net = PopulationMLP(num_runs=3, hidden=8, init_seeds=[1, 2, 3])
    with torch.no_grad():
        net.hidden.weight[1, 0, 0] = 0.0  # an exact zero must be constrained (+1), not left free (torch.sign = 0)
        net.hidden.weight[2, 0, 0] = -0.0
    template = random_template(net)
    assert template["hidden.weight"][1, 0, 0] == 1.0 and template["hidden.weight"][2, 0, 0] == 1.0
    for r in range(3):
        hidden = net.hidden.weight.detach()[r]
        assert torch.equal(template["hidden.weight"][r], torch.where(hidden < 0, -1.0, 1.0))
    assert not torch.equal(template["hidden.weight"][0], template["hidden.weight"][1])  # per run, not shared
    constraint = SignConstraint(template, reset="zero")
    with torch.no_grad():
        net.hidden.weight[1, 0, 0] = -0.5  # crossing from 0 to negative is a violation
    assert constraint.project_(net) == 1 and net.hidden.weight[1, 0, 0] == 0.0


def test_a_pickled_constraint_continues_the_same_random_stream() -> None:
    import pickle

    template = {"weight": torch.ones(1, 40)}
    constraint, layer = SignConstraint(template, seed=5), nn.Linear(40, 1)
    layer.weight.data.fill_(-1.0)
    constraint.project_(layer)  # creates the generator and the parameter cache
    copy = pickle.loads(pickle.dumps(constraint))
    for c in (constraint, copy):
        layer.weight.data.fill_(-1.0)
        c.project_(layer)
        if c is constraint:
            expected = layer.weight.detach().clone()
    torch.testing.assert_close(layer.weight.data, expected)
