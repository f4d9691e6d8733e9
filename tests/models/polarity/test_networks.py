"""Networks: a population trains exactly like its runs would alone; non-negative nets are monotone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from models.polarity.freeze_sgd import SignConstraint
from models.polarity.networks import AlexNetPaper, AlexNetTorchvision, PopulationMLP, SmallCNN
from models.polarity.sign_templates import align_to_template, make_template


def test_runs_sharing_an_init_seed_start_identical() -> None:
    net = PopulationMLP(num_runs=3, hidden=8, init_seeds=[7, 8, 7])
    assert torch.equal(net.hidden.weight[0], net.hidden.weight[2])
    assert not torch.equal(net.hidden.weight[0], net.hidden.weight[1])


def test_paper_init_truncates_kernels_at_two_std() -> None:
    net = PopulationMLP(num_runs=20, hidden=64)
    assert net.hidden.weight.abs().max() <= 0.5
    assert 0.15 < net.hidden.weight.std() < 0.25  # truncated N(0, 0.25) has std ~0.22


def test_population_training_equals_training_each_run_alone() -> None:
    """Summing the runs' mean losses gives each run exactly its own gradient; Adam is element-wise."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 16, 5), torch.randint(0, 2, (2, 16)).float()
    population = PopulationMLP(num_runs=2, hidden=8, init_seeds=[1, 2])
    singles = [PopulationMLP(num_runs=1, hidden=8, init_seeds=[s]) for s in (1, 2)]
    optimizers = [torch.optim.Adam(m.parameters(), lr=0.05) for m in [population, *singles]]
    for _ in range(10):
        for opt in optimizers:
            opt.zero_grad()
        F.binary_cross_entropy_with_logits(population(x).squeeze(-1), y, reduction="none").mean(1).sum().backward()
        for r, single in enumerate(singles):
            F.binary_cross_entropy_with_logits(single(x[r : r + 1]).squeeze(-1), y[r : r + 1]).backward()
        for opt in optimizers:
            opt.step()
    for r, single in enumerate(singles):
        torch.testing.assert_close(population.hidden.weight[r], single.hidden.weight[0])
        torch.testing.assert_close(population.output.bias[r], single.output.bias[0])


def _nonnegative_net(seed: int) -> PopulationMLP:
    torch.manual_seed(seed)
    net = PopulationMLP(num_runs=4, hidden=32, init_seeds=[seed * 10 + i for i in range(4)])
    template = make_template("positive", net)
    align_to_template(net, template)
    constraint = SignConstraint(template, reset="zero")
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    constraint.attach(optimizer, net)
    for _ in range(20):  # train on a random objective: weights move, the constraint holds them >= 0
        optimizer.zero_grad()
        (net(torch.randn(4, 32, 5)) * torch.randn(4, 32, 1)).sum().backward()
        optimizer.step()
    return net


@pytest.mark.parametrize("seed", range(5))
def test_nonnegative_network_output_is_monotone_in_every_input(seed: int) -> None:
    net = _nonnegative_net(seed)
    assert all(torch.all(p >= 0) for n, p in net.named_parameters() if n.endswith("weight"))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 200, 5, generator=generator) * 2
    with torch.no_grad():
        base = net(x)
        for dim in range(5):
            step = torch.zeros(5)
            step[dim] = torch.rand(1, generator=generator).item() * 3 + 1e-3
            assert torch.all(net(x + step) >= base - 1e-6), f"output decreased along input {dim}"


@pytest.mark.parametrize("cls", [AlexNetPaper, AlexNetTorchvision])
def test_alexnets_refuse_images_too_small_and_run_on_the_minimum(cls) -> None:
    with pytest.raises(UserError, match="dataset.resize"):
        cls(in_channels=1, num_classes=10, image_size=cls.MIN_SIZE - 1, width_mult=0.1)
    net = cls(in_channels=1, num_classes=10, image_size=cls.MIN_SIZE, width_mult=0.1)
    assert net(torch.randn(2, 1, cls.MIN_SIZE, cls.MIN_SIZE)).shape == (2, 10)


def test_paper_alexnet_has_the_reference_widths_and_a_6x6_map_at_227() -> None:
    net = AlexNetPaper(in_channels=3, num_classes=10, image_size=227, width_mult=1.0)
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert convs[0].padding == (0, 0) and convs[0].stride == (4, 4)
    fcs = [m for m in net.classifier if isinstance(m, torch.nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(256 * 6 * 6, 4096), (4096, 4096), (4096, 1000)]
    # dropout follows fc6 and fc7 (Keras reference), not precedes them (torchvision)
    kinds = [type(m).__name__ for m in net.classifier]
    assert kinds == ["Flatten", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear", "ReLU"]


def test_paper_alexnet_init_is_keras_glorot_with_zero_biases() -> None:
    torch.manual_seed(0)
    net = AlexNetPaper(in_channels=3, num_classes=10, image_size=227, width_mult=0.5)
    conv = net.features[3].weight  # 5x5, fan_in = 48*25, fan_out = 128*25
    glorot_std = (2.0 / (48 * 25 + 128 * 25)) ** 0.5
    assert abs(conv.std().item() / glorot_std - 1) < 0.05
    assert conv.abs().max() <= 2 * glorot_std / 0.8796 + 1e-6  # truncated at 2 stddev
    fc = net.classifier[4].weight
    limit = (6.0 / sum(fc.shape)) ** 0.5
    assert fc.abs().max() <= limit and fc.abs().max() > 0.95 * limit  # Glorot-uniform
    assert net.head.weight.abs().max() <= 0.5 and 0.18 < net.head.weight.std() < 0.25
    assert all(torch.all(m.bias == 0) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


def test_small_cnn_shapes() -> None:
    assert SmallCNN(in_channels=3, num_classes=7, image_size=32)(torch.randn(2, 3, 32, 32)).shape == (2, 7)
