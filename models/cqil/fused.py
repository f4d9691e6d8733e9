"""`fused` mode: one CQIL group on one device as fewer, larger kernels (paper Sec. 4, single-device case).

All members read the same h, so (folding each member's RMSNorm weight into its projections) the
q/k/v projections of the whole group are one matmul on RMSNorm(h); o_proj and gate/up are batched
matmuls over members (their inputs differ); the down projections of all members are one matmul whose
output is already the group's MLP sum. Same semantics as `SequentialGroup` up to float rounding
(tested). Weights are copies: train LoRA on `sequential`.

Attention: when the keys a call attends to are exactly those it just projected (no cache, or the first
forward into an empty dynamic cache: prefill) it is one attention call with the members' heads stacked
member-major (so GQA head sharing is preserved). Otherwise (decode, or a static cache, which returns its
whole preallocated buffer) each member attends with its own query heads to what its own cache layer
returns: P calls reading the cache tensors in place. Stacking the cached K/V for one call would copy
2 x P x context x kv heads x head_dim values every step, a cost growing with the context, where P calls
add a fixed per-call overhead (timed in bench/cqil_fused_decode.py, results/cqil/fused_decode/). Each
member's K/V stays in the cache layer of its original index, so `generate()`, `get_seq_length()` and a
model switched back with `remove_cqil` see the same cache as in sequential mode.
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

    # True restores the former decode path (the members' cached K/V concatenated every step, one
    # attention call): kept only so that bench/cqil_fused_decode.py can time both in one run.
    stacked_cache_concat: bool = False

    def __init__(self, members: Sequence[nn.Module], spec: CQILSpec) -> None:
        super().__init__()
        first = members[0]
        attn = first.self_attn
        self.layer_indices = [int(m.self_attn.layer_idx) for m in members]
        # for the attention interface (scaling, GQA groups, is_causal); not a registered submodule, so the
        # first member's weights do not appear twice in state_dict (the plugin registers the members)
        object.__setattr__(self, "attn_module", attn)
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
        interface = self.attention_functions.get_interface(self.config._attn_implementation, self.eager_attention)

        def attend(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
            return interface(self.attn_module, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs)[0]

        if past_key_values is None:
            out = attend(q, k, v)
        else:
            cached = []
            for j, idx in enumerate(self.layer_indices):
                sl = slice(j * self.n_kv, (j + 1) * self.n_kv)
                cached.append(past_key_values.update(k[:, sl].contiguous(), v[:, sl].contiguous(), idx))
            if self.stacked_cache_concat:
                out = attend(q, torch.cat([kj for kj, _ in cached], 1), torch.cat([vj for _, vj in cached], 1))
            elif all(kj.shape[-2] == seq for kj, _ in cached):  # the cache returned just this call's tokens: k, v
                out = attend(q, k, v)
            else:  # (B, T, heads, d) per member, joined member-major along the heads
                out = torch.cat(
                    [attend(q[:, j * self.n_heads : (j + 1) * self.n_heads], kj, vj) for j, (kj, vj) in enumerate(cached)], 2
                )
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
