"""`fused` mode: one CQIL group on one device as fewer, larger kernels (paper Sec. 4, single-device case).

All members read the same h, so (folding each member's RMSNorm weight into its projections) the
q/k/v projections of the whole group are one matmul on RMSNorm(h); the group's attention is one
SDPA call with the members' heads stacked (member-major, so GQA head sharing is preserved); o_proj
and gate/up are batched matmuls over members (their inputs differ); the down projections of all
members are one matmul whose output is already the group's MLP sum. Same semantics as
`SequentialGroup` up to float rounding (tested). Weights are copies: train LoRA on `sequential`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from common.errors import UserError
from models.cqil.plugin import CQILSpec


def _rms(x: Tensor, eps: float) -> Tensor:
    """RMSNorm without its weight, computed in float32 as LlamaRMSNorm does."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _eps(norm: nn.Module) -> float:
    for name in ("variance_epsilon", "eps"):
        if hasattr(norm, name):
            return float(getattr(norm, name))
    raise UserError(f"fused mode: cannot read the epsilon of {type(norm).__name__}")


def _bias(linear: nn.Linear, size: int, like: Tensor) -> Tensor:
    return linear.bias.detach() if linear.bias is not None else like.new_zeros(size)


class FusedGroup(nn.Module):
    """A CQIL group whose projections run stacked over its members."""

    def __init__(self, members: Sequence[nn.Module], spec: CQILSpec) -> None:
        super().__init__()
        first = members[0]
        attn = first.self_attn
        self.layer_indices = [int(m.self_attn.layer_idx) for m in members]
        self.attn_module = attn  # for the attention interface (scaling, GQA groups, is_causal)
        self.config = attn.config
        self.head_dim = int(attn.head_dim)
        self.n_heads = self.config.num_attention_heads
        self.n_kv = self.config.num_key_value_heads
        self.scaling = float(attn.scaling)
        self.eps1 = _eps(first.input_layernorm)
        self.eps2 = _eps(first.post_attention_layernorm)
        self.act = first.mlp.act_fn
        self.distance = spec.bypass_distance
        self.residual = spec.bypass_residual
        self.rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        module = sys.modules[type(attn).__module__]
        self.attention_functions = module.ALL_ATTENTION_FUNCTIONS
        self.eager_attention = module.eager_attention_forward
        with torch.no_grad():
            qkv_w, qkv_b, o_w, gu_w, d_w = [], [], [], [], []
            for m in members:
                a, mlp = m.self_attn, m.mlp
                w1 = m.input_layernorm.weight.detach()
                w2 = m.post_attention_layernorm.weight.detach()
                qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach()
                qkv_w.append(qkv * w1[None, :])
                qkv_b.append(torch.cat([_bias(p, p.out_features, qkv) for p in (a.q_proj, a.k_proj, a.v_proj)]))
                if a.o_proj.bias is not None or getattr(mlp.down_proj, "bias", None) is not None:
                    raise UserError("fused mode: o_proj / down_proj biases are not supported; use mode=sequential")
                o_w.append(a.o_proj.weight.detach())
                gu_w.append(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach() * w2[None, :])
                d_w.append(mlp.down_proj.weight.detach())
        self.register_buffer("qkv_weight", torch.cat(qkv_w).contiguous(), persistent=False)  # (P*(q+k+v), H)
        self.register_buffer("qkv_bias", torch.cat(qkv_b).contiguous(), persistent=False)
        self.register_buffer("o_weight", torch.stack(o_w).transpose(1, 2).contiguous(), persistent=False)  # (P, Hq*d, H)
        self.register_buffer("gu_weight", torch.stack(gu_w).transpose(1, 2).contiguous(), persistent=False)  # (P, H, 2I)
        self.register_buffer("down_weight", torch.cat(d_w, dim=1).t().contiguous(), persistent=False)  # (P*I, H)
        self.p = len(members)
        self.has_qkv_bias = bool(self.qkv_bias.abs().sum() > 0)

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
        past_key_values=None,
        **kwargs,
    ) -> Tensor:
        h = hidden_states
        bsz, seq, _ = h.shape
        p, d = self.p, self.head_dim
        qkv = _rms(h, self.eps1) @ self.qkv_weight.t()
        if self.has_qkv_bias:
            qkv = qkv + self.qkv_bias
        qkv = qkv.view(bsz, seq, p, (self.n_heads + 2 * self.n_kv), d)
        q = qkv[..., : self.n_heads, :]
        k = qkv[..., self.n_heads : self.n_heads + self.n_kv, :]
        v = qkv[..., self.n_heads + self.n_kv :, :]
        # (B, T, P, heads, d) -> (B, P*heads, T, d), member-major
        q = q.reshape(bsz, seq, p * self.n_heads, d).transpose(1, 2)
        k = k.reshape(bsz, seq, p * self.n_kv, d).transpose(1, 2)
        v = v.reshape(bsz, seq, p * self.n_kv, d).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = self.rope(q, k, cos, sin)
        if past_key_values is not None:
            ks, vs = [], []
            for j, idx in enumerate(self.layer_indices):
                sl = slice(j * self.n_kv, (j + 1) * self.n_kv)
                kj, vj = past_key_values.update(k[:, sl].contiguous(), v[:, sl].contiguous(), idx)
                ks.append(kj)
                vs.append(vj)
            k, v = torch.cat(ks, 1), torch.cat(vs, 1)
        interface = self.attention_functions.get_interface(self.config._attn_implementation, self.eager_attention)
        out, _ = interface(self.attn_module, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs)
        out = out.reshape(bsz, seq, p, self.n_heads * d).permute(2, 0, 1, 3).reshape(p, bsz * seq, -1)  # (P, BT, Hq*d)
        attn = torch.bmm(out, self.o_weight)  # (P, BT, H)
        flat = h.reshape(1, bsz * seq, -1)
        if self.distance:
            cum = torch.cumsum(attn, 0)
            lo = torch.arange(p, device=h.device) - self.distance - 1
            before = torch.where((lo >= 0)[:, None, None], cum[lo.clamp(min=0)], torch.zeros_like(cum[:1]))
            bypass = torch.cat([torch.zeros_like(attn[:1]), cum[:-1]]) - before
        else:
            bypass = torch.zeros_like(attn)
        mixed = flat + attn + bypass
        gate_up = torch.bmm(_rms(mixed, self.eps2), self.gu_weight)  # (P, BT, 2I)
        gate, up = gate_up.chunk(2, dim=-1)
        inner = (self.act(gate) * up).transpose(0, 1).reshape(bsz * seq, -1)  # (BT, P*I)
        mlp_sum = inner @ self.down_weight
        branch = (attn + bypass) if self.residual else attn
        return h + (branch.sum(0) + mlp_sum).view(bsz, seq, -1)
