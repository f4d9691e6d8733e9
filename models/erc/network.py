"""CMATH (arXiv 2411.10060) and the symmetric SDT-style fusion baseline.

CMATH's code is not released; the structure follows the paper's description, and where it is silent
the choice of SDT (Ma et al. 2023, butterfliesss/SDT) is taken:
1. Modality reconstruction (Sec. "Multimodal Interaction Fusion"): per modality an encoder to a
   compressed code (Linear -> LayerNorm -> GELU; input feature dropout makes it a denoising
   autoencoder, our choice) and a linear decoder back to the input; MSE reconstruction loss.
2. CMA-Transformer: intra-modal self-attention per modality with sinusoidal position + speaker
   embeddings (SDT), then cross-modal attention where the *central* modality queries each auxiliary
   one (auxiliaries never query the central one: the asymmetry). Fine-grained representations:
   the central intra-modal one and one central<-auxiliary representation per auxiliary modality.
3. Variational fusion (Hierarchical Variational Distillation): the fine representations are combined
   by SDT's multimodal gated fusion (softmax over representations per dimension), then mu / log-
   variance heads and the reparameterisation trick give the coarse representation; KL to N(0, I).
   At evaluation the mean is used.
4. Hierarchical distillation: the coarse (fused) head teaches every fine head (logit KL with
   temperature) and a feature-consistency term pulls projected fine features toward the coarse one.
   `distillation_form` picks the KL (models.erc.losses.DISTILLATION_FORMS): CMATH's default is `hinton`
   (T^2 * KL, teacher detached: knowledge flows from the coarse head down only); the symmetric
   baseline's config sets `sdt`, SDT's own loss (plain KL, the teacher not detached).
Our addition (`context_gru`: off in the class, on in conf/model/erc_cmath.yaml): a residual BiGRU over each modality's utterance
sequence before the self-attention, to give the intra-modal encoder local order on small corpora
(with frozen sentence features only, a plain transformer trails a BiGRU on IEMOCAP; see results/erc).
Loss = CE(fused) + fine_ce * sum CE(fine) + kd * sum KD + feat * sum consistency + kl * KL + recon * sum MSE.
Each component is switchable (`reconstruction`, `cross_modal`, `variational`, `distillation`); turning
one off removes exactly its loss terms and leaves the rest of the computation unchanged (the encoder
stays as a projection without reconstruction; fusion uses mu without sampling or KL).

`symmetric=True` gives the SDT-style baseline: every modality queries every other one, each
modality's representation is a linear reduction of [intra, cross...], fused by the same gate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.erc.layers import DialoguePositions, Head, Stack
from models.erc.losses import (
    DISTILLATION_FORMS,
    distillation_kl,
    feature_consistency,
    gaussian_kl,
    masked_cross_entropy,
    reconstruction_mse,
)


@dataclass
class ERCOutput:
    """Fused logits (B, T, C) plus what the loss needs; baselines fill `logits` only."""

    logits: Tensor
    fine_logits: dict[str, Tensor] = field(default_factory=dict)
    fine_features: dict[str, Tensor] = field(default_factory=dict)
    coarse: Tensor | None = None
    mu: Tensor | None = None
    logvar: Tensor | None = None
    reconstructions: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # modality -> (decoded, input)


class ModalityReconstruction(nn.Module):
    """Encoder to a compressed code and decoder back, per modality."""

    def __init__(self, dims: Mapping[str, int], hidden: int, input_dropout: float) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Dropout(input_dropout), nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.GELU())
                for m, d in dims.items()
            }
        )
        self.decoders = nn.ModuleDict({m: nn.Linear(hidden, d) for m, d in dims.items()})

    def forward(self, features: Mapping[str, Tensor], mask: Tensor) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, Tensor]]]:
        codes, pairs = {}, {}
        for m, encoder in self.encoders.items():
            codes[m] = encoder(features[m]) * mask.unsqueeze(-1)
            pairs[m] = (self.decoders[m](codes[m]), features[m])
        return codes, pairs


class GatedVariationalFusion(nn.Module):
    """Fine representations -> gated sum (SDT) -> mu, logvar -> coarse z (reparameterised when training)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(hidden, hidden, bias=False)
        self.mu = nn.Linear(hidden, hidden)
        self.logvar = nn.Linear(hidden, hidden)

    def forward(self, fine: Sequence[Tensor], sample: bool) -> tuple[Tensor, Tensor, Tensor]:
        stacked = torch.stack(list(fine), dim=-2)  # (B, T, K, H)
        weights = torch.softmax(self.gate(stacked), dim=-2)
        pooled = (weights * stacked).sum(-2)
        mu, logvar = self.mu(pooled), self.logvar(pooled).clamp(-10.0, 10.0)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        return z, mu, logvar


class CMATH(nn.Module):
    """CMATH network; see the module docstring for each part and the SDT-derived choices."""

    def __init__(
        self,
        dims: Mapping[str, int],
        num_classes: int,
        num_speakers: int,
        modalities: Sequence[str] | None = None,
        central: str = "text",
        hidden: int = 256,
        heads: int = 4,
        layers: int = 1,
        dropout: float = 0.3,
        input_dropout: float = 0.1,
        reconstruction: bool = True,
        cross_modal: bool = True,
        variational: bool = True,
        distillation: bool = True,
        symmetric: bool = False,
        temperature: float = 1.0,
        distillation_form: str = "hinton",
        context_gru: bool = False,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        modalities = list(modalities or dims)
        missing = [m for m in modalities if m not in dims]
        if missing:
            raise ValueError(f"modalities {missing} not in the data (available: {sorted(dims)})")
        if central not in modalities:
            raise ValueError(f"central modality {central!r} is not one of {modalities}")
        self.modalities, self.central = modalities, central
        self.auxiliary = [m for m in modalities if m != central]
        self.use_reconstruction, self.use_cross = reconstruction, cross_modal and len(modalities) > 1
        self.use_variational, self.use_distillation, self.symmetric = variational, distillation, symmetric
        if distillation_form not in DISTILLATION_FORMS:
            raise ValueError(f"distillation_form={distillation_form!r}: not one of {sorted(DISTILLATION_FORMS)}")
        self.temperature, self.distillation_form = float(temperature), DISTILLATION_FORMS[distillation_form]
        self.loss_weights = {"ce": 1.0, "fine_ce": 1.0, "kd": 1.0, "feat": 0.1, "kl": 1e-3, "recon": 1.0, **(loss_weights or {})}
        self.reconstruction = ModalityReconstruction({m: dims[m] for m in modalities}, hidden, input_dropout)
        self.positions = DialoguePositions(hidden, num_speakers)
        self.context = (
            nn.ModuleDict({m: nn.GRU(hidden, hidden // 2, batch_first=True, bidirectional=True) for m in modalities})
            if context_gru
            else None
        )
        used = modalities if (symmetric or self.use_cross) else [central]
        self.intra = nn.ModuleDict({m: Stack(hidden, heads, dropout, layers) for m in used})
        self.cross = nn.ModuleDict({f"{q}<-{k}": Stack(hidden, heads, dropout, layers) for q, k in self._cross_pairs()})
        if symmetric and self.use_cross:
            self.reduce = nn.ModuleDict({m: nn.Linear(hidden * len(modalities), hidden) for m in modalities})
        names = self.fine_names()
        self.fine_heads = nn.ModuleDict({n: Head(hidden, num_classes, dropout) for n in names})
        self.projections = nn.ModuleDict({n: nn.Linear(hidden, hidden) for n in names})
        self.fusion = GatedVariationalFusion(hidden)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def _cross_pairs(self) -> list[tuple[str, str]]:
        if not self.use_cross:
            return []
        if self.symmetric:
            return [(q, k) for q in self.modalities for k in self.modalities if q != k]
        return [(self.central, k) for k in self.auxiliary]

    def fine_names(self) -> list[str]:
        """Names of the fine-grained representations (and their heads)."""
        if self.symmetric or not self.use_cross:
            return list(self.modalities) if self.symmetric else [self.central]
        return [self.central] + [f"{self.central}<-{m}" for m in self.auxiliary]

    def forward(self, features: Mapping[str, Tensor], mask: Tensor, speakers: Tensor) -> ERCOutput:
        codes, pairs = self.reconstruction(features, mask)
        used = self.modalities if (self.symmetric or self.use_cross) else [self.central]
        inputs = {m: self.positions(codes[m], speakers, mask) for m in used}
        if self.context is not None:
            inputs = {m: self._recur(m, x, mask) for m, x in inputs.items()}
        intra = {m: self.intra[m](x, None, mask) for m, x in inputs.items()}
        cross = {name: block(intra[name.split("<-")[0]], intra[name.split("<-")[1]], mask) for name, block in self.cross.items()}
        if self.symmetric:
            fine = {
                m: self.reduce[m](torch.cat([intra[m]] + [cross[f"{m}<-{k}"] for k in self.modalities if k != m], -1))
                if self.use_cross
                else intra[m]
                for m in self.modalities
            }
        else:
            fine = {self.central: intra[self.central], **cross}
        z, mu, logvar = self.fusion(list(fine.values()), sample=self.training and self.use_variational)
        z = z * mask.unsqueeze(-1)
        return ERCOutput(
            logits=self.head(z),
            fine_logits={n: self.fine_heads[n](f) for n, f in fine.items()},
            fine_features={n: self.projections[n](f) for n, f in fine.items()},
            coarse=z,
            mu=mu,
            logvar=logvar,
            reconstructions=pairs if self.use_reconstruction else {},
        )

    def _recur(self, modality: str, x: Tensor, mask: Tensor) -> Tensor:
        """Optional BiGRU over the utterance sequence before self-attention (padded steps packed away)."""
        packed = pack_padded_sequence(x, mask.sum(1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.context[modality](packed)
        return x + pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]

    def loss_terms(self, out: ERCOutput, labels: Tensor, mask: Tensor, class_weight: Tensor | None = None) -> dict[str, Tensor]:
        """Unweighted loss terms that are switched on (a switched-off part contributes no key)."""
        terms = {"ce": masked_cross_entropy(out.logits, labels, mask, class_weight)}
        if self.loss_weights["fine_ce"]:
            terms["fine_ce"] = sum(masked_cross_entropy(fine, labels, mask, class_weight) for fine in out.fine_logits.values())
        if self.use_distillation:
            terms["kd"] = sum(
                distillation_kl(fine, out.logits, mask, self.temperature, self.distillation_form)
                for fine in out.fine_logits.values()
            )
            terms["feat"] = sum(feature_consistency(f, out.coarse, mask) for f in out.fine_features.values())
        if self.use_variational:
            terms["kl"] = gaussian_kl(out.mu, out.logvar, mask)
        if self.use_reconstruction:
            terms["recon"] = sum(reconstruction_mse(d, x, mask) for d, x in out.reconstructions.values())
        return terms
