"""Fake profiles: shape, filler count, target ratings, and the attack objective on the real targets."""

import pytest
import torch

from models.recsys.attacks import AverageAttack, BandwagonAttack, NoAttack, RandomAttack, item_stats
from models.recsys.networks import MatrixFactorization
from models.recsys.surrogate_attacks import CoAttack, GCoAttack, GradientAttack, attack_hinge, released_hinge

R = 5.0


@pytest.fixture
def train() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    matrix = torch.randint(1, 6, (30, 40), generator=g).float()
    return matrix * (torch.rand(30, 40, generator=g) < 0.3)


def check_profiles(fake: torch.Tensor, targets: torch.Tensor, n_fake: int, n_filler: int, n_items: int) -> None:
    assert fake.shape == (n_fake, n_items)
    assert torch.all(fake[:, targets] == R)
    assert torch.all((fake > 0).sum(1) == n_filler + len(targets))
    values = fake[fake > 0]
    assert torch.all(values == values.round()) and values.min() >= 1 and values.max() <= R


@pytest.mark.parametrize("attack", [RandomAttack(), AverageAttack(), BandwagonAttack(n_selected=3)])
def test_heuristic_profiles(attack, train) -> None:
    targets = torch.tensor([3, 7])
    fake = attack.generate(train, targets, 4, 10, R, torch.Generator().manual_seed(1))
    check_profiles(fake, targets, 4, 10, 40)


def test_average_attack_follows_item_means(train) -> None:
    targets = torch.tensor([0])
    fake = AverageAttack().generate(train, targets, 400, 20, R, torch.Generator().manual_seed(0))
    mean, _, _, _ = item_stats(train)
    rated = fake > 0
    rated[:, 0] = False
    fake_mean = (fake * rated).sum(0) / rated.sum(0).clamp(min=1)
    busy = rated.sum(0) > 100
    assert torch.allclose(fake_mean[busy], mean[busy].clamp(1, R), atol=0.5)


def test_bandwagon_rates_popular_items_max(train) -> None:
    train[:, 5] = 2.0  # item 5 rated by everyone: the most popular
    fake = BandwagonAttack(n_selected=1).generate(train, torch.tensor([3]), 3, 6, R, torch.Generator())
    assert torch.all(fake[:, 5] == R)


def test_no_attack_and_bad_arguments(train) -> None:
    assert NoAttack().generate(train, torch.tensor([1]), 5, 5, R, torch.Generator()).shape == (0, 40)
    with pytest.raises(ValueError, match="n_filler"):
        RandomAttack().generate(train, torch.tensor([1]), 2, 40, R, torch.Generator())


def test_hinge_uses_real_target_ids_and_kth_score() -> None:
    model = MatrixFactorization(3, 6, dim=2)
    with torch.no_grad():
        model.user.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        model.item.copy_(torch.tensor([[0.9, 0], [0.8, 0], [0.1, 0], [0.0, 0], [0.5, 0], [0.2, 0]]))
    # real users 0, 1: scores 0.9 0.8 0.1 0 0.5 0.2; K=2 -> s^(K) = 0.8. target 4: 0.8 - 0.5 = 0.3 each
    loss = attack_hinge(model, 2, torch.tensor([4]), top_k=2, kappa=0.2)
    assert loss.item() == pytest.approx(0.6)
    # target 0 already above s^(K) by 0.1 < kappa: the hinge is active at 0.8 - 0.9 = -0.1 per user
    assert attack_hinge(model, 2, torch.tensor([0]), top_k=2, kappa=0.2).item() == pytest.approx(-0.2)
    loss.backward()
    assert model.item.grad.to_dense()[4, 0] < 0  # minimising pushes the target's score up


def sigmoid_mf(probabilities: list[float]) -> MatrixFactorization:
    """Two real users and one fake, each real user scoring item i at probabilities[i] (sigmoid link)."""
    model = MatrixFactorization(3, len(probabilities), dim=1, link="sigmoid")
    with torch.no_grad():
        model.user.copy_(torch.ones(3, 1))
        model.item.copy_(torch.logit(torch.tensor(probabilities)).unsqueeze(1))
    return model


def test_released_hinge_reads_the_first_columns_and_the_negated_kth_score() -> None:
    # small scores: s^(K=2) = 0.06 (item 4), column 0 = 0.05: max(-0.06 - 0.05, -0.2) = -0.11 per real user
    model = sigmoid_mf([0.05, 0.04, 0.09, 0.01, 0.06, 0.02])
    loss = released_hinge(model, 2, torch.tensor([4]), top_k=2, kappa=0.2)
    assert loss.item() == pytest.approx(-0.22, abs=1e-5)
    # the target id is never read: any single target gives the same loss, two targets read columns 0 and 1
    assert released_hinge(model, 2, torch.tensor([5]), top_k=2, kappa=0.2).item() == pytest.approx(loss.item())
    two = released_hinge(model, 2, torch.tensor([4, 5]), top_k=2, kappa=0.2).item()
    assert two == pytest.approx(2 * (-0.06 - 0.05) + 2 * (-0.06 - 0.04), abs=1e-5)
    loss.backward()
    assert model.item.grad.to_dense()[0, 0] < 0  # it pushes column 0 up, not the target
    # ordinary scores: s^(K) + s_c > kappa, so the released hinge sits at -kappa with no gradient
    busy = sigmoid_mf([0.6, 0.7, 0.9, 0.5, 0.8, 0.4])
    flat = released_hinge(busy, 2, torch.tensor([4]), top_k=2, kappa=0.2)
    assert flat.item() == pytest.approx(-0.4)
    flat.backward()
    assert torch.count_nonzero(busy.item.grad.to_dense()) == 0


def test_attacks_take_the_hinge_by_name() -> None:
    model, target = sigmoid_mf([0.05, 0.04, 0.09]), torch.tensor([2])
    # K = 50 > 3 items: s^(K) is the lowest score, 0.04; released: -0.04 - 0.05; intended: 0.04 - 0.09 -> -kappa
    assert CoAttack(hinge="reference").attack_loss(model, 2, target).item() == pytest.approx(-0.18, abs=1e-5)
    assert CoAttack(hinge="intended").attack_loss(model, 2, target).item() == pytest.approx(-0.10, abs=1e-5)
    with pytest.raises(ValueError, match="attack.method.hinge='slipped'"):
        GCoAttack(hinge="slipped")


@pytest.mark.parametrize(
    "attack",
    [
        CoAttack(epochs=3, attack_epochs=2, dim=8, batch_size=64),
        GCoAttack(epochs=2, attack_epochs=1, dim=8, batch_size=64),
        GradientAttack(epochs=2, attack_epochs=1, dim=8, batch_size=64),
    ],
)
def test_model_based_profiles(attack, train) -> None:
    torch.manual_seed(0)
    targets = torch.tensor([2, 9])
    fake = attack.generate(train, targets, 3, 8, R, torch.Generator().manual_seed(0))
    check_profiles(fake, targets, 3, 8, 40)


@pytest.mark.parametrize("keep_labelling", [False, True])
def test_gcoattack_keeps_tcd_labels_in_its_attack_half_only_as_a_variant(train, monkeypatch, keep_labelling) -> None:
    from models.recsys import surrogate_attacks, training

    calls = []

    def counting_fit(*args, **kwargs):
        calls.append(kwargs["stats"] if kwargs.get("stats") else training.LoopStats())
        kwargs["stats"] = calls[-1]
        return training.fit(*args, **kwargs)

    monkeypatch.setattr(surrogate_attacks, "fit", counting_fit)
    attack = GCoAttack(epochs=3, attack_epochs=1, dim=8, batch_size=64, pseudo_labels_while_attacking=keep_labelling)
    attack.generate(train, torch.tensor([2, 9]), 3, 8, R, torch.Generator().manual_seed(0))
    # TCD labels from epoch 1 (reference start): epochs 1 and 2 of 3, three models each; epoch 2 is the attack half
    assert len(calls[0].pseudo_per_model) == (6 if keep_labelling else 3)


def test_gcoattack_released_reading_takes_sigmoid_ratings_from_the_last_model() -> None:
    linear = [MatrixFactorization(2, 4, dim=1) for _ in range(3)]
    for model, scale in zip(linear, (0.5, 0.0, 1.0)):
        with torch.no_grad():
            model.user.copy_(torch.ones(2, 1))
            model.item.copy_(torch.tensor([[0.3], [0.1], [0.0], [-0.2]]) * scale)
    # fake user 1; target item 3; two fillers. Predicted, from model 0: round(8 x 0.15), round(8 x 0.05) -> 1, 1 (floor)
    predicted = GCoAttack().profiles_from(linear, 1, 1, torch.tensor([3]), 2, 8.0)
    assert predicted.tolist() == [[1.0, 1.0, 0.0, 8.0]]
    # released: the last model's top items 0, 1 at round(8 sigmoid(0.3)) = 5 and round(8 sigmoid(0.1)) = 4
    released = GCoAttack(profile_reading="released").profiles_from(linear, 1, 1, torch.tensor([3]), 2, 8.0)
    assert released.tolist() == [[5.0, 4.0, 0.0, 8.0]]
    with pytest.raises(ValueError, match="attack.method.profile_reading='raw'"):
        GCoAttack(profile_reading="raw")
