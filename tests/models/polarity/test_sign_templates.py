"""Sign templates: what each one fixes, and what transfer copies (signs only)."""

from __future__ import annotations

import pytest
import torch

from common.errors import UserError
from models.polarity.networks import PopulationMLP, SmallCNN
from models.polarity.sign_templates import (
    align_to_template,
    constrained_parameters,
    load_matching,
    make_template,
    sign_of,
    transferred_names,
)


def test_sign_of_maps_zero_to_plus_one() -> None:
    assert sign_of(torch.tensor([-2.0, 0.0, 3.0])).tolist() == [-1.0, 1.0, 1.0]


def test_only_weight_matrices_and_kernels_are_constrained() -> None:
    net = SmallCNN(in_channels=1, num_classes=10, image_size=28)
    assert sorted(constrained_parameters(net)) == ["classifier.1.weight", "features.0.weight", "features.3.weight", "head.weight"]


def test_informed_template_gives_output_weight_the_sign_of_w1j_times_w2j() -> None:
    net = PopulationMLP(num_runs=4, hidden=16)
    template = make_template("informed", net)
    hidden = net.hidden.weight.detach()
    expected = sign_of(hidden[..., 0] * hidden[..., 1]).unsqueeze(1)  # (R, 1, H)
    torch.testing.assert_close(template["output.weight"], expected)
    torch.testing.assert_close(template["hidden.weight"], sign_of(hidden))


def test_informed_template_needs_the_xor_mlp() -> None:
    with pytest.raises(UserError, match="polarity_mlp"):
        make_template("informed", SmallCNN(in_channels=1, num_classes=2, image_size=8))


def test_transfer_copies_signs_only_and_new_layers_keep_their_own() -> None:
    torch.manual_seed(0)
    source = SmallCNN(in_channels=1, num_classes=5, image_size=28)
    torch.manual_seed(1)
    target = SmallCNN(in_channels=1, num_classes=10, image_size=28)
    magnitudes = {n: p.detach().abs().clone() for n, p in target.named_parameters()}
    own_head_signs = sign_of(target.head.weight.detach())
    source_state = source.state_dict()
    template = make_template("transfer", target, source_state)
    align_to_template(target, template)
    for name, param in constrained_parameters(target).items():
        torch.testing.assert_close(param.abs(), magnitudes[name])  # magnitudes from the fresh init
    assert set(transferred_names(target, source_state)) == {"features.0.weight", "features.3.weight", "classifier.1.weight"}
    for name in transferred_names(target, source_state):
        assert torch.equal(sign_of(dict(target.named_parameters())[name].detach()), sign_of(source_state[name]))
    assert torch.equal(template["head.weight"], own_head_signs)


def test_transfer_without_a_source_is_a_user_error() -> None:
    with pytest.raises(UserError, match="polarity.source"):
        make_template("transfer", SmallCNN(in_channels=1, num_classes=2, image_size=8))


def test_in_weight_copies_every_matching_tensor_but_not_the_new_head() -> None:
    torch.manual_seed(0)
    source = SmallCNN(in_channels=1, num_classes=5, image_size=28)
    target = SmallCNN(in_channels=1, num_classes=10, image_size=28)
    copied = load_matching(target, source.state_dict())
    assert "head.weight" not in copied and "features.0.weight" in copied
    assert torch.equal(target.features[0].weight, source.features[0].weight)


def test_positive_template_with_zero_reset_is_projected_descent_onto_nonnegative_weights() -> None:
    """Train with the nonneg arm's settings: every weight stays >= 0, the projection really fires (some
    weights sit exactly at 0), and the unconstrained biases do go negative."""
    import torch.nn.functional as F

    from models.polarity.freeze_sgd import SignConstraint

    net = PopulationMLP(num_runs=2, hidden=16, init_seeds=[0, 1])
    template = make_template("positive", net)
    align_to_template(net, template)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    SignConstraint(template, reset="zero").attach(optimizer, net)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        x = torch.randn(2, 32, 5, generator=generator)
        y = (x[..., 0] * x[..., 1] < 0).float()  # rewards negative weights
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(net(x).squeeze(-1), y, reduction="none").mean(1).sum().backward()
        optimizer.step()
    weights = torch.cat([net.hidden.weight.detach().flatten(), net.output.weight.detach().flatten()])
    assert torch.all(weights >= 0) and torch.any(weights == 0)
    assert torch.any(net.hidden.bias < 0)


def test_unknown_template_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown sign template 'magic'"):
        make_template("magic", PopulationMLP())
