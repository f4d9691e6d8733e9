"""Run preparation (experiments.tasks.polarity.task.prepare_runs): initial weights per arm, alignment to the
template, and which runs Freeze-SGD constrains. Each test fails on a set-up bug a reviewer could make:
dropping the alignment, freezing the Fluid runs, or starting conditions of one seed from different weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from experiments.tasks.polarity.task import Condition, prepare_runs
from models.polarity.networks import PopulationMLP, SmallCNN
from models.polarity.sign_templates import make_template, sign_of

FLUID = Condition("fluid", "random", False, "posRand")
FLUID_INFORMED = Condition("fluid_informed", "informed", False, "posRand")
FREEZE_RANDOM = Condition("freeze_random", "random", True, "posRand")
FREEZE_INFORMED = Condition("freeze_informed", "informed", True, "posRand")
CONDITIONS = [FLUID, FLUID_INFORMED, FREEZE_RANDOM, FREEZE_INFORMED]
SEEDS = [11, 12, 13]


def _population(align: str = "flip", hidden: int = 32):
    runs = [(c, s) for c in CONDITIONS for s in SEEDS]
    net = PopulationMLP(num_runs=len(runs), hidden=hidden, init_seeds=[s for _, s in runs])
    fresh = {n: p.detach().clone() for n, p in net.named_parameters()}
    informed = make_template("informed", net)["output.weight"].clone()  # computed on the fresh weights
    constraints = prepare_runs(net, [c for c, _ in runs], None, eps=1e-3, seed=0, align=align)
    return net, runs, fresh, informed, constraints


def _index(runs, condition, seed) -> int:
    return runs.index((condition, seed))


def test_conditions_of_one_seed_start_from_the_same_weights_and_seeds_differ() -> None:
    net, runs, fresh, _, _ = _population("flip")
    hidden, output = net.hidden.weight.detach(), net.output.weight.detach()
    for seed in SEEDS:
        rows = [_index(runs, c, seed) for c in CONDITIONS]
        for r in rows[1:]:
            assert torch.equal(hidden[r], hidden[rows[0]])  # hidden template = own signs for every arm
            assert torch.equal(output[r].abs(), output[rows[0]].abs())  # flip keeps magnitudes
        assert torch.equal(output[_index(runs, FREEZE_RANDOM, seed)], output[_index(runs, FLUID, seed)])
        assert torch.equal(net.output.bias[rows[0]], net.output.bias[rows[-1]])
    assert not torch.equal(hidden[_index(runs, FLUID, 11)], hidden[_index(runs, FLUID, 12)])


def test_flip_alignment_gives_every_weight_its_template_sign_with_fresh_magnitudes() -> None:
    net, runs, fresh, informed, _ = _population("flip")
    output = net.output.weight.detach()
    for seed in SEEDS:
        r = _index(runs, FREEZE_INFORMED, seed)
        violated = fresh["output.weight"][r] * informed[r] < 0
        assert violated.any()  # not vacuous: the informed template disagrees with about half the fresh signs
        assert torch.equal(sign_of(output[r]), informed[r])
        torch.testing.assert_close(output[r].abs(), fresh["output.weight"][r].abs())
        assert torch.equal(output[_index(runs, FLUID_INFORMED, seed)], output[r])  # Fluid-informed starts the same


def test_reset_alignment_applies_the_reset_rule_to_violated_weights_only() -> None:
    net, runs, fresh, informed, _ = _population("reset")
    output = net.output.weight.detach()
    for seed in SEEDS:
        r = _index(runs, FREEZE_INFORMED, seed)
        violated = fresh["output.weight"][r] * informed[r] < 0
        assert violated.any() and (~violated).any()
        assert torch.all(output[r][violated] * informed[r][violated] >= 0)
        assert torch.all(output[r][violated].abs() <= 1e-3)  # posRand: S * U(0, eps), near zero
        assert torch.equal(output[r][~violated], fresh["output.weight"][r][~violated])
        assert torch.equal(output[_index(runs, FLUID, seed)], fresh["output.weight"][_index(runs, FLUID, seed)])


def test_after_preparation_the_first_projection_resets_nothing() -> None:
    for align in ("flip", "reset"):
        net, _, _, _, constraints = _population(align)
        assert sum(c.project_(net) for c in constraints) == 0


def test_only_frozen_runs_are_constrained_and_fluid_runs_move_freely() -> None:
    net, runs, fresh, informed, constraints = _population("flip", hidden=16)
    assert len(constraints) == 1
    templates = {name: getattr(constraints[0], f"template_{i}") for i, name in enumerate(constraints[0].names)}
    for r, (condition, _) in enumerate(runs):
        for template in templates.values():
            assert bool(torch.all(template[r] == 0)) == (not condition.freeze)
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    optimizer = torch.optim.SGD(net.parameters(), lr=2.0)
    for constraint in constraints:
        constraint.attach(optimizer, net)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(len(runs), 16, 5, generator=generator)
        y = (torch.rand(len(runs), 16, generator=generator) < 0.5).float()
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(net(x).squeeze(-1), y, reduction="none").mean(1).sum().backward()
        optimizer.step()
    for r, (condition, _) in enumerate(runs):
        flipped = sum(
            int((sign_of(p.detach()[r]) != sign_of(start[n][r])).sum()) for n, p in net.named_parameters() if n.endswith("weight")
        )
        if condition.freeze:
            assert flipped == 0, condition.name
    fluid_flips = sum(
        int((sign_of(net.output.weight.detach()[r]) != sign_of(start["output.weight"][r])).sum())
        for r, (c, _) in enumerate(runs)
        if not c.freeze
    )
    assert fluid_flips > 0  # large steps flip some unconstrained weights


def test_in_weight_arms_start_from_the_source_and_freeze_in_weight_keeps_its_signs() -> None:
    torch.manual_seed(5)
    source = SmallCNN(in_channels=1, num_classes=5, image_size=8, channels=(4,), hidden=8).state_dict()
    arms = {
        "in_weight": Condition("in_weight", "transfer", False, "posRand", "source"),
        "freeze_in_weight": Condition("freeze_in_weight", "transfer", True, "posRand", "source"),
        "freeze_in_pol": Condition("freeze_in_pol", "transfer", True, "posRand"),
    }
    nets, constraints = {}, {}
    for name, condition in arms.items():
        torch.manual_seed(0)
        nets[name] = SmallCNN(in_channels=1, num_classes=10, image_size=8, channels=(4,), hidden=8)
        fresh = nets[name].features[0].weight.detach().clone()
        constraints[name] = prepare_runs(nets[name], [condition], source, eps=1e-3, seed=0)
    for name in ("in_weight", "freeze_in_weight"):
        assert torch.equal(nets[name].features[0].weight, source["features.0.weight"])
    assert torch.equal(nets["in_weight"].head.weight, nets["freeze_in_weight"].head.weight)
    assert constraints["in_weight"] == [] and len(constraints["freeze_in_weight"]) == 1
    pol = nets["freeze_in_pol"].features[0].weight.detach()
    assert torch.equal(sign_of(pol), sign_of(source["features.0.weight"])) and torch.equal(pol.abs(), fresh.abs())


def test_an_unknown_alignment_is_a_user_error() -> None:
    with pytest.raises(UserError, match="polarity.align"):
        prepare_runs(PopulationMLP(num_runs=1, hidden=2), [FLUID], None, eps=1e-3, seed=0, align="twist")
