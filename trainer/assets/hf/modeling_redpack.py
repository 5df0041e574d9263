"""RedLLM and DecLLM as redpack trains them, in PyTorch for `transformers`.

Written by `redpack export --format hf` next to `config.json` and `model.safetensors`; loaded
with `AutoModelForCausalLM` (DecLLM) or `AutoModelForSeq2SeqLM` (RedLLM) and
`trust_remote_code=True`. The arithmetic is that of redpack's CPU backend, in float32:

- RMSNorm with a gain before every block and after every stack: `x / sqrt(mean(x^2) + eps) * g`;
- attention: Q, K and V projected without bias, each head of each normalized by a
  parameter-free RMSNorm (QKV normalization), RoPE on Q and K with the half-split pairing
  (element i of a head pairs with i + head_dim/2, angle `pos * theta^(-2i/head_dim)`), scores
  scaled by `head_dim^-0.5`; in a RedLLM each head's output is normalized again before the
  output projection;
- SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`;
- logits: the final hidden state times the tied embedding, scaled by `hidden_size^-0.5`.

DecLLM reads tokens at positions 0, 1, ... (counted over the attention mask's real tokens) with a
causal mask. A "DecLLM + BiAttn" model (`config.bidirectional_prefix`) lets the first
`prefix_lengths[b]` tokens of row b attend to each other both ways: `generate` passes the prompt's
length; a plain forward call without `prefix_lengths` is causal throughout.

RedLLM encodes the input at positions 0..k-1 (bidirectional) and decodes at positions k, k+1, ...
(continuous positions). The decoder's first input is always the input's last token: whatever
`decoder_input_ids[:, 0]` holds (the `decoder_start_token_id` of `generate`, or the start that
`labels` are shifted behind) is replaced by it.

No key/value cache: every forward call runs the whole sequence, so `generate` recomputes the
sequence at each new token (exact, slower for long outputs).
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput, Seq2SeqLMOutput

try:
    from transformers import GenerationMixin
except ImportError:  # older transformers: PreTrainedModel generates by itself
    GenerationMixin = object

from .configuration_redpack import RedpackConfig


def rms_normalize(x, eps):
    """`x / sqrt(mean(x^2) + eps)` over the last dimension."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class RedpackRMSNorm(nn.Module):
    def __init__(self, width, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x):
        return rms_normalize(x, self.eps) * self.weight


def rope_tables(positions, head_dim, theta):
    """cos and sin (`positions.shape + (head_dim/2,)`), angles computed in float64."""
    half = head_dim // 2
    exponent = torch.arange(half, dtype=torch.float64, device=positions.device) / half
    inv_freq = torch.pow(torch.tensor(float(theta), dtype=torch.float64), -exponent).to(
        positions.device
    )
    angles = positions.to(torch.float64)[..., None] * inv_freq
    return angles.cos().to(torch.float32), angles.sin().to(torch.float32)


def apply_rope(x, cos, sin):
    """Rotates `x` (batch, tokens, heads, head_dim) by per-token tables (batch, tokens, half)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def mask_positions(mask):
    """Positions 0, 1, ... over the real tokens of each row (padding gets 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class RedpackAttention(nn.Module):
    """Self- or cross-attention with QKV normalization and RoPE."""

    def __init__(self, config):
        super().__init__()
        d, da = config.hidden_size, config.num_attention_heads * config.head_dim
        self.heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.eps = config.rms_norm_eps
        self.theta = config.rope_theta
        self.output_norm = config.attention_output_norm
        self.q_proj = nn.Linear(d, da, bias=False)
        self.k_proj = nn.Linear(d, da, bias=False)
        self.v_proj = nn.Linear(d, da, bias=False)
        self.o_proj = nn.Linear(da, d, bias=False)

    def split(self, x):
        b, t, _ = x.shape
        return rms_normalize(x.view(b, t, self.heads, self.head_dim), self.eps)

    def forward(self, x, source, q_positions, k_positions, allowed):
        """`allowed` (batch, queries, keys): which keys each query sees."""
        q = self.split(self.q_proj(x))
        k = self.split(self.k_proj(source))
        v = self.split(self.v_proj(source))
        q = apply_rope(q, *rope_tables(q_positions, self.head_dim, self.theta))
        k = apply_rope(k, *rope_tables(k_positions, self.head_dim, self.theta))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # batch, heads, tokens, head_dim
        scores = torch.matmul(q, k.transpose(-1, -2)) * (self.head_dim**-0.5)
        scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1)
        # A query that sees no key (padding) outputs zeros, as in the trainer.
        probs = probs * allowed[:, None].any(-1, keepdim=True)
        out = torch.matmul(probs, v).transpose(1, 2)  # batch, tokens, heads, head_dim
        if self.output_norm:
            out = rms_normalize(out, self.eps)
        return self.o_proj(out.reshape(out.shape[0], out.shape[1], -1))


class RedpackMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class RedpackLayer(nn.Module):
    """A DecLLM layer or RedLLM encoder layer (`cross=False`), or a RedLLM decoder layer."""

    def __init__(self, config, cross=False):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = RedpackRMSNorm(config.hidden_size, eps)
        self.self_attn = RedpackAttention(config)
        if cross:
            self.cross_attn_layernorm = RedpackRMSNorm(config.hidden_size, eps)
            self.cross_attn = RedpackAttention(config)
        self.post_attention_layernorm = RedpackRMSNorm(config.hidden_size, eps)
        self.mlp = RedpackMLP(config)

    def forward(self, x, positions, allowed, memory=None):
        """`memory`: (encoder output, its positions, cross `allowed`) for a decoder layer."""
        h = self.input_layernorm(x)
        x = x + self.self_attn(h, h, positions, positions, allowed)
        if memory is not None:
            encoded, enc_positions, cross_allowed = memory
            h = self.cross_attn_layernorm(x)
            x = x + self.cross_attn(h, encoded, positions, enc_positions, cross_allowed)
        return x + self.mlp(self.post_attention_layernorm(x))


class RedpackStack(nn.Module):
    def __init__(self, config, layers, cross=False):
        super().__init__()
        self.layers = nn.ModuleList(RedpackLayer(config, cross) for _ in range(layers))
        self.norm = RedpackRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, positions, allowed, memory=None):
        for layer in self.layers:
            x = layer(x, positions, allowed, memory)
        return self.norm(x)


class RedpackPreTrainedModel(PreTrainedModel):
    config_class = RedpackConfig
    base_model_prefix = "model"
    _no_split_modules = ["RedpackLayer"]
    _supports_cache_class = False

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, module.weight.shape[-1] ** -0.5)
        elif isinstance(module, RedpackRMSNorm):
            module.weight.data.fill_(1.0)

    def tied_logits(self, hidden):
        embed = self.model.embed_tokens.weight
        return F.linear(hidden, embed) * (self.config.hidden_size**-0.5)


def token_loss(logits, targets):
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100
    )


class RedpackDecModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(RedpackLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RedpackRMSNorm(config.hidden_size, config.rms_norm_eps)


class RedpackForCausalLM(RedpackPreTrainedModel, GenerationMixin):
    """DecLLM (and "DecLLM + BiAttn") as a causal language model."""

    def __init__(self, config):
        super().__init__(config)
        self.model = RedpackDecModel(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        prefix_lengths=None,
        labels=None,
        return_dict=None,
        **kwargs,
    ):
        b, t = input_ids.shape
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        real = attention_mask.bool()
        positions = mask_positions(attention_mask)
        idx = torch.arange(t, device=device)
        allowed = idx[None, :, None] >= idx[None, None, :]
        if self.config.bidirectional_prefix and prefix_lengths is not None:
            p = torch.as_tensor(prefix_lengths, device=device).reshape(-1, 1, 1)
            allowed = allowed | ((idx[None, :, None] < p) & (idx[None, None, :] < p))
        allowed = allowed & real[:, None, :]
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, positions, allowed)
        logits = self.tied_logits(self.model.norm(x))
        loss = None
        if labels is not None:
            loss = token_loss(logits[:, :-1], labels[:, 1:])
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(
        self, input_ids, attention_mask=None, prefix_lengths=None, **kwargs
    ):
        if self.config.bidirectional_prefix and prefix_lengths is None:
            # The first call of `generate` holds exactly the prompt.
            prefix_lengths = torch.full(
                (input_ids.shape[0],), input_ids.shape[1], device=input_ids.device
            )
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prefix_lengths": prefix_lengths,
        }

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        if self.config.bidirectional_prefix and model_kwargs.get("prefix_lengths") is None:
            # The first forward call ran the prompt: its logits are as long as the prompt.
            prompt = outputs.logits.shape[1]
            model_kwargs["prefix_lengths"] = torch.full(
                (outputs.logits.shape[0],), prompt, device=outputs.logits.device
            )
        return super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)


@dataclass
class RedpackEncoderOutput(BaseModelOutput):
    """The encoder output plus what the decoder needs of the input: each row's last real token
    (the decoder's first input) and number of real tokens (the decoder's first position)."""

    last_token_ids: Optional[torch.LongTensor] = None
    input_lengths: Optional[torch.LongTensor] = None
    attention_mask: Optional[torch.LongTensor] = None


class RedpackRedModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.encoder = RedpackStack(config, config.num_encoder_layers)
        self.decoder = RedpackStack(config, config.num_decoder_layers, cross=True)


class RedpackEncoderView(nn.Module):
    """The encoder half of a `RedpackForSeq2SeqLM`, as `generate` calls it (holds no weights of
    its own)."""

    main_input_name = "input_ids"

    def __init__(self, owner):
        super().__init__()
        object.__setattr__(self, "owner", owner)

    def forward(self, input_ids=None, attention_mask=None, return_dict=None, **kwargs):
        return self.owner.encode(input_ids, attention_mask)


class RedpackForSeq2SeqLM(RedpackPreTrainedModel, GenerationMixin):
    """RedLLM as a sequence-to-sequence language model."""

    main_input_name = "input_ids"

    def __init__(self, config):
        super().__init__(config)
        self.model = RedpackRedModel(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_encoder(self):
        return RedpackEncoderView(self)

    def get_decoder(self):
        return self.model.decoder

    def encode(self, input_ids, attention_mask=None):
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        real = attention_mask.bool()
        lengths = attention_mask.long().sum(-1)
        idx = torch.arange(t, device=input_ids.device)
        last = (real.long() * idx[None, :]).argmax(-1)
        # Bidirectional over the real tokens (padding queries too; their outputs are never read).
        allowed = real[:, None, :].expand(b, t, t)
        x = self.model.embed_tokens(input_ids)
        hidden = self.model.encoder(x, mask_positions(attention_mask), allowed)
        return RedpackEncoderOutput(
            last_hidden_state=hidden,
            last_token_ids=input_ids.gather(1, last[:, None])[:, 0],
            input_lengths=lengths,
            attention_mask=attention_mask,
        )

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        labels=None,
        return_dict=None,
        **kwargs,
    ):
        if encoder_outputs is None or not isinstance(encoder_outputs, RedpackEncoderOutput):
            if input_ids is None:
                raise ValueError(
                    "RedpackForSeq2SeqLM needs input_ids, or encoder_outputs from its encoder"
                )
            encoder_outputs = self.encode(input_ids, attention_mask)
        if attention_mask is None:
            attention_mask = encoder_outputs.attention_mask
        encoded = encoder_outputs.last_hidden_state
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("RedpackForSeq2SeqLM needs decoder_input_ids or labels")
            start = torch.zeros_like(labels[:, :1])
            decoder_input_ids = torch.cat([start, labels[:, :-1]], dim=1)
            decoder_input_ids = decoder_input_ids.masked_fill(
                decoder_input_ids == -100, self.config.pad_token_id
            )
        decoder_input_ids = decoder_input_ids.clone()
        decoder_input_ids[:, 0] = encoder_outputs.last_token_ids
        b, t = decoder_input_ids.shape
        device = decoder_input_ids.device
        idx = torch.arange(t, device=device)
        positions = encoder_outputs.input_lengths[:, None] + idx[None, :]
        allowed = (idx[:, None] >= idx[None, :])[None].expand(b, t, t)
        if decoder_attention_mask is not None:
            allowed = allowed & decoder_attention_mask.bool()[:, None, :]
        enc_real = attention_mask.bool()
        cross_allowed = enc_real[:, None, :].expand(b, t, enc_real.shape[1])
        memory = (encoded, mask_positions(attention_mask), cross_allowed)
        x = self.model.embed_tokens(decoder_input_ids)
        hidden = self.model.decoder(x, positions, allowed, memory)
        logits = self.tied_logits(hidden)
        loss = None if labels is None else token_loss(logits, labels)
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return Seq2SeqLMOutput(loss=loss, logits=logits, encoder_last_hidden_state=encoded)

    def prepare_inputs_for_generation(
        self, input_ids, encoder_outputs=None, attention_mask=None, **kwargs
    ):
        return {
            "decoder_input_ids": input_ids,
            "encoder_outputs": encoder_outputs,
            "attention_mask": attention_mask,
        }
