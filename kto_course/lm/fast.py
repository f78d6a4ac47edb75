"""A lean forward pass and a KV-cache sampler for the tiny GPT-2 (speed only, same math).

At ~0.2M parameters a step of lesson 06 costs Python calls, not arithmetic: transformers'
``GPT2LMHeadModel.forward`` spends most of its ~11 ms building masks and dispatching, and
``generate`` adds its logits processors and stopping criteria at every token. These two functions
compute the SAME network with the model's own parameters (gradients flow into them as usual),
in a dozen torch calls per layer:

- ``logits(model, input_ids)``: the logits of a RIGHT-padded batch. Causal attention alone is
  exact there: a real token never attends to the padding after it, so no mask is needed.
- ``sample_ids(model, prompt_ids, prompt_mask, ...)``: ancestral sampling with a key/value
  cache, drawing exactly as ``generate(do_sample=True, top_k=0, top_p=1.0)`` does (softmax of
  the float32 logits / temperature, ``torch.multinomial``, <pad> after <eos>, stop when every
  row has ended).

Any model this does not cover (another architecture, dropout while training, a config flag
that changes the attention) goes through ``model(...)`` / ``model.generate`` instead: see
``supported``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["supported", "logits", "sample_ids"]


def supported(model) -> bool:
    """True if ``model`` is a GPT-2 LM whose forward ``logits`` reproduces exactly."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "gpt2":
        return False
    if not hasattr(model, "transformer") or not hasattr(model, "lm_head"):
        return False
    dropout = max(cfg.resid_pdrop, cfg.embd_pdrop, cfg.attn_pdrop)
    return (
        cfg.activation_function in ("gelu_new", "gelu_pytorch_tanh")
        and cfg.scale_attn_weights
        and not cfg.scale_attn_by_inverse_layer_idx
        and not cfg.reorder_and_upcast_attn
        and not getattr(cfg, "add_cross_attention", False)
        and (dropout == 0 or not model.training)
        and model.lm_head.bias is None
    )


def _weights(model) -> tuple:
    """The parameters the forward uses, looked up once per call (module attribute lookups
    cost more than the arithmetic at this size). Same tensors: gradients flow into them."""
    t, cfg = model.transformer, model.config
    blocks = [
        (b.ln_1.weight, b.ln_1.bias, b.attn.c_attn.weight, b.attn.c_attn.bias,
         b.attn.c_proj.weight, b.attn.c_proj.bias, b.ln_2.weight, b.ln_2.bias,
         b.mlp.c_fc.weight, b.mlp.c_fc.bias, b.mlp.c_proj.weight, b.mlp.c_proj.bias)
        for b in t.h
    ]  # fmt: skip
    return (t.wte.weight, t.wpe.weight, blocks, t.ln_f.weight, t.ln_f.bias,
            model.lm_head.weight, cfg.n_head, cfg.layer_norm_epsilon)  # fmt: skip


def _block(w, h, n_head, eps, cache=None, pos=None, attn_mask=None):
    """One GPT-2 block (weights ``w``) on h (B, T, C). ``cache``: (K, V) buffers
    (B, nh, L, hd) to fill at positions ``pos:pos+T`` and attend over ``[:pos+T]``;
    ``attn_mask``: bool, True = visible."""
    ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, out_w, out_b = w
    B, T, C = h.shape
    a = F.layer_norm(h, (C,), ln1_w, ln1_b, eps)
    qkv = torch.addmm(attn_b, a.view(B * T, C), attn_w)
    q, k, v = qkv.view(B, T, 3, n_head, C // n_head).permute(2, 0, 3, 1, 4).unbind(0)
    if cache is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        K, V = cache
        K[:, :, pos : pos + T] = k
        V[:, :, pos : pos + T] = v
        k, v = K[:, :, : pos + T], V[:, :, : pos + T]
        if attn_mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
    y = y.transpose(1, 2).reshape(B * T, C)
    h = h + torch.addmm(proj_b, y, proj_w).view(B, T, C)
    m = F.layer_norm(h, (C,), ln2_w, ln2_b, eps)
    m = F.gelu(torch.addmm(fc_b, m.view(B * T, C), fc_w), approximate="tanh")
    return h + torch.addmm(out_b, m, out_w).view(B, T, C)


def _embed(w, input_ids, position_ids):
    return F.embedding(input_ids, w[0]) + F.embedding(position_ids, w[1])


def _head(w, h):
    h = F.layer_norm(h, (h.shape[-1],), w[3], w[4], w[7])
    return h @ w[5].T


def logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
           start: int = 0):  # fmt: skip
    """Logits (B, T - start, vocab) of a right-padded batch: ``model(input_ids=...).logits``
    at positions ``start`` and after (the LM head is skipped where no logit is needed).

    Falls back to the model's own forward when ``supported(model)`` is False.
    """
    if not supported(model):
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.logits[:, start:]
    w = _weights(model)
    T = input_ids.shape[1]
    positions = torch.arange(T, device=input_ids.device).unsqueeze(0)
    h = _embed(w, input_ids, positions)
    for block in w[2]:
        h = _block(block, h, w[6], w[7])
    return _head(w, h[:, start:])


@torch.no_grad()
def sample_ids(model, prompt_ids, prompt_mask, max_new_tokens: int, temperature: float,
               eos_token_id: int, pad_token_id: int) -> torch.Tensor:  # fmt: skip
    """New token ids (B, <= max_new_tokens) sampled after LEFT-padded prompts.

    Draws from torch's global generator exactly as ``generate`` does with ``do_sample=True,
    top_k=0, top_p=1.0``: the float32 logits of the last position, divided by the temperature
    (unless it is 1), softmax, ``torch.multinomial``; a row that has produced <eos> gets <pad>
    from then on; the loop stops when every row has ended.
    """
    if not supported(model):
        out = model.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True,
            temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
            pad_token_id=pad_token_id, eos_token_id=eos_token_id,
        )  # fmt: skip
        return out[:, prompt_ids.shape[1] :]
    cfg, w = model.config, _weights(model)
    B, P = prompt_ids.shape
    L = P + max_new_tokens
    nh, C = cfg.n_head, cfg.n_embd
    dev = prompt_ids.device
    dtype = w[0].dtype
    caches = [
        (torch.empty(B, nh, L, C // nh, device=dev, dtype=dtype),
         torch.empty(B, nh, L, C // nh, device=dev, dtype=dtype))
        for _ in w[2]
    ]  # fmt: skip
    padded = not bool(prompt_mask.all())
    if padded:  # positions and key mask as generate derives them from the attention mask
        keys = torch.ones(B, L, dtype=torch.bool, device=dev)
        keys[:, :P] = prompt_mask.bool()
        positions = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(P, P, dtype=torch.bool, device=dev).tril()
        # Every query sees itself, so a left-pad row is never fully masked (its output is unused).
        mask = (causal & keys[:, None, :P]) | torch.eye(P, dtype=torch.bool, device=dev)
        mask = mask[:, None]
        next_pos = positions[:, -1:] + 1
    else:
        positions = torch.arange(P, device=dev).unsqueeze(0)
        mask = None
        next_pos = torch.full((1, 1), P, device=dev)
    h = _embed(w, prompt_ids, positions)
    for block, cache in zip(w[2], caches, strict=True):
        h = _block(block, h, nh, w[7], cache, 0, mask)
    last = _head(w, h[:, -1:])[:, 0].float()
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    out = []
    for t in range(max_new_tokens):
        scores = last if temperature == 1.0 else last / temperature
        tokens = torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        tokens = torch.where(finished, pad_token_id, tokens)
        out.append(tokens)
        finished |= tokens == eos_token_id
        if t == max_new_tokens - 1 or bool(finished.all()):
            break
        pos = P + t
        h = _embed(w, tokens[:, None], next_pos + t)
        step_mask = keys[:, None, None, : pos + 1] if padded else None
        for block, cache in zip(w[2], caches, strict=True):
            h = _block(block, h, nh, w[7], cache, pos, step_mask)
        last = _head(w, h)[:, 0].float()
    return torch.stack(out, dim=1)
