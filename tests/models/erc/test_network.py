"""CMATH network: shapes with masks, padding invariance, switches, central modality, baselines."""

from __future__ import annotations

import pytest
import torch

from models.erc.baselines import BiGRU
from models.erc.network import CMATH

DIMS = {"text": 8, "audio": 6, "visual": 5}
LENGTHS = [5, 3, 1]


def batch(seed: int = 0, dims=DIMS, lengths=LENGTHS, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    b, t = len(lengths), max(lengths)
    mask = torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    features = {m: torch.randn(b, t, d, generator=g) * mask.unsqueeze(-1) for m, d in dims.items()}
    speakers = torch.randint(0, 2, (b, t), generator=g) * mask
    labels = torch.randint(0, classes, (b, t), generator=g).masked_fill(~mask, -1)
    return features, mask, speakers, labels


def make(**kwargs) -> CMATH:
    torch.manual_seed(0)
    return CMATH(DIMS, num_classes=4, num_speakers=2, hidden=16, heads=2, **kwargs).eval()


def test_shapes_through_every_block_and_padding_is_zeroed():
    net = make()
    features, mask, speakers, _ = batch()
    out = net(features, mask, speakers)
    assert out.logits.shape == (3, 5, 4)
    assert list(out.fine_logits) == ["text", "text<-audio", "text<-visual"]
    for name in out.fine_logits:
        assert out.fine_logits[name].shape == (3, 5, 4)
        assert out.fine_features[name].shape == (3, 5, 16)
    assert out.mu.shape == out.logvar.shape == out.coarse.shape == (3, 5, 16)
    assert set(out.reconstructions) == set(DIMS)
    for modality, (decoded, target) in out.reconstructions.items():
        assert decoded.shape == target.shape == (3, 5, DIMS[modality])
    assert torch.all(out.coarse[~mask] == 0)


@pytest.mark.parametrize(
    "factory",
    [lambda: make(), lambda: make(symmetric=True), lambda: make(context_gru=True), lambda: BiGRU(DIMS, 4, 2, hidden=8).eval()],
)
def test_padded_utterances_do_not_change_real_outputs(factory):
    net = factory()
    features, mask, speakers, _ = batch()
    reference = net(features, mask, speakers).logits
    noisy = {m: f + 100.0 * torch.randn_like(f) * (~mask).unsqueeze(-1) for m, f in features.items()}
    changed = net(noisy, mask, speakers).logits
    torch.testing.assert_close(changed[mask], reference[mask], rtol=1e-4, atol=1e-5)


def test_dialogue_context_is_used():
    """Changing one real utterance changes the prediction of another one in the same dialogue."""
    net = make()
    features, mask, speakers, _ = batch()
    reference = net(features, mask, speakers).logits
    features["text"][0, 4] += 5.0
    assert not torch.allclose(net(features, mask, speakers).logits[0, 0], reference[0, 0])


def test_central_modality_is_configurable_and_asymmetric():
    net = make(central="audio")
    assert net.fine_names() == ["audio", "audio<-text", "audio<-visual"]
    assert sorted(net.cross) == ["audio<-text", "audio<-visual"]
    symmetric = make(symmetric=True)
    assert len(symmetric.cross) == 6 and symmetric.fine_names() == list(DIMS)
    with pytest.raises(ValueError, match="central modality"):
        make(central="smell")


def test_auxiliary_modality_reaches_the_central_prediction_only_through_cross_attention():
    features, mask, speakers, _ = batch()
    for cross, expect_change in ((True, True), (False, False)):
        net = make(cross_modal=cross)
        reference = net(features, mask, speakers).logits
        changed = dict(features, audio=features["audio"] + 3.0 * mask.unsqueeze(-1))
        moved = not torch.allclose(net(changed, mask, speakers).logits, reference)
        assert moved is expect_change


SWITCHES = [("reconstruction", {"recon"}), ("variational", {"kl"}), ("distillation", {"kd", "feat"})]


@pytest.mark.parametrize("switch,removed", SWITCHES)
def test_each_ablation_switch_removes_exactly_its_loss(switch, removed):
    full = make()
    ablated = make(**{switch: False})
    ablated.load_state_dict(full.state_dict())
    features, mask, speakers, labels = batch()
    full_terms = full.loss_terms(full(features, mask, speakers), labels, mask)
    ablated_terms = ablated.loss_terms(ablated(features, mask, speakers), labels, mask)
    assert set(full_terms) - set(ablated_terms) == removed
    assert set(ablated_terms) <= set(full_terms)
    for key in ablated_terms:
        torch.testing.assert_close(ablated_terms[key], full_terms[key])
    assert all(float(full_terms[k].detach()) > 0 for k in removed)


def test_variational_fusion_samples_only_in_training():
    net = make()
    features, mask, speakers, _ = batch()
    torch.testing.assert_close(net(features, mask, speakers).logits, net(features, mask, speakers).logits)
    net.train()
    torch.manual_seed(1)
    a = net.fusion([torch.ones(1, 2, 16)], sample=True)[0]
    b = net.fusion([torch.ones(1, 2, 16)], sample=True)[0]
    assert not torch.allclose(a, b)


@pytest.mark.slow
def test_overfits_a_tiny_set():
    torch.manual_seed(0)
    net = CMATH(DIMS, num_classes=4, num_speakers=2, hidden=32, heads=2, dropout=0.0, input_dropout=0.0)
    features, mask, speakers, labels = batch(lengths=[6, 4, 5, 3])
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(300):
        optimizer.zero_grad()
        terms = net.loss_terms(net(features, mask, speakers), labels, mask)
        sum(net.loss_weights[k] * v for k, v in terms.items()).backward()
        optimizer.step()
    net.eval()
    out = net(features, mask, speakers)
    final = net.loss_terms(out, labels, mask)
    assert float(final["ce"].detach()) < 0.05
    assert torch.equal(out.logits.argmax(-1)[mask], labels[mask])
