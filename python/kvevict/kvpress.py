"""A kvpress press that runs kvevict's policies.

    from kvevict.kvpress import KvevictPress
    press = KvevictPress(kvevict.SnapKV(sinks=0, window=64), compression_ratio=0.5)
    with press(model):
        model(input_ids, past_key_values=cache)     # the prefill compresses every layer's cache

It works wherever a kvpress press does (``KVPressTextGenerationPipeline``, ``with press(model):``).
At the end of each attention layer's prefill it computes the window queries the way kvpress's
SnapKV does (pre-rotary queries of the last ``window`` hidden states, rotary applied with the
layer's ``position_embeddings``), hands keys, values and queries to kvevict without copies, and
kvevict scores, selects and compacts the layer's cache in place. The layer's cache then holds the
kept entries in their original order (kvpress's own presses keep them in score order).

Budget per (sequence, KV head): ``compute_n_kept(tokens, compression_ratio)`` as kvpress computes
it, or the policy's ``budget`` when ``compression_ratio`` is None. Policies that need more than
queries: ``H2O`` reads the layer's attention probabilities (``attn_implementation="eager"``) and
uses kvpress's ObservedAttention normalisation (each key's summed attention divided by the number
of queries that could see it); ``SentenceKV`` and ``SABlock`` read the prompt's token ids, which
the press takes from the language model's ``input_ids`` (a forward pre-hook). ``AdaSnapKV`` keeps
a different number of entries per head, which a dense HF cache cannot hold: like kvpress's
AdaKVPress it leaves the cache whole and masks the evicted keys through kvpress's attention patch
(``module.masked_key_indices``; not with eager attention). On a GPU model the press plans it over
a CPU copy of the layer (the library's device allocation of per-head budgets, 2026-11-30, has not
yet run on a GPU; ``kvevict.plan`` takes CUDA tensors for it). On a GPU model with a
package built with CUDA, every other policy runs on the CUDA backend, on the layer's device.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
from kvpress.presses.base_press import BasePress
from kvpress.utils import compute_n_kept, get_prerope_query_states
from transformers.models.llama.modeling_llama import rotate_half

import kvevict

__all__ = ["KvevictPress", "window_queries", "delimiter_ids", "sentence_ids"]


def window_queries(module, hidden_states: torch.Tensor, window: int, position_embeddings) -> torch.Tensor:
    """The last ``window`` queries of every query head with rotary applied, as kvpress's SnapKV
    computes them: ``[batch, num_q_heads, window, head_dim]``, contiguous."""
    q = get_prerope_query_states(module, hidden_states[:, -window:])
    cos, sin = position_embeddings
    cos, sin = cos[:, -window:].unsqueeze(1), sin[:, -window:].unsqueeze(1)
    return ((q * cos) + (rotate_half(q) * sin)).contiguous()


@dataclass
class KvevictPress(BasePress):
    """A kvpress press that scores, selects and compacts with a kvevict policy.

    Parameters
    ----------
    policy : kvevict.Policy
        Any kvevict policy (``kvevict.SnapKV(sinks=0, window=64)``, ``kvevict.SABlock(...)``, ...).
    compression_ratio : float or None
        Fraction of every head's entries to evict, kvpress's way (``compute_n_kept``); None keeps
        the policy's ``budget`` entries per head.
    """

    policy: Optional[kvevict.Policy] = None
    compression_ratio: Optional[float] = None

    def __post_init__(self):
        if not isinstance(self.policy, kvevict.Policy):
            raise kvevict.KvevictError("kvevict: invalid argument in 'policy': must be a kvevict policy",
                                       "invalid argument", "policy")
        if self.compression_ratio is not None and not 0 <= self.compression_ratio < 1:
            raise kvevict.KvevictError("kvevict: invalid argument in 'compression_ratio': must lie in [0, 1)",
                                       "invalid argument", "compression_ratio")
        self._input_ids = None
        #: the last plan of every layer, ``{layer_idx: KeepPlan}`` (for inspection and tests)
        self.plans = {}

    def budget(self, module, k_len: int) -> int:
        """Entries each (sequence, KV head) of this layer keeps (for PyramidKV: the layer average)."""
        if self.compression_ratio is None:
            return int(self.policy.budget)
        return compute_n_kept(k_len, self.compression_ratio)

    @contextmanager
    def __call__(self, model):
        language_model = model.model.language_model if hasattr(model.model, "language_model") else model.model

        def grab_input_ids(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None:
                self._input_ids = ids

        hook = language_model.register_forward_pre_hook(grab_input_ids, with_kwargs=True)
        try:
            with super().__call__(model):
                yield
        finally:
            hook.remove()

    def _signals(self, module, hidden_states, keys, attentions, kwargs) -> dict:
        bsz, _, k_len, _ = keys.shape
        sig = {"layer": int(module.layer_idx), "num_layers": int(module.config.num_hidden_layers)}
        needs = self.policy.needs
        if "queries" in needs:
            window = min(int(self.policy.window), k_len)
            q = window_queries(module, hidden_states, window, kwargs["position_embeddings"])
            sig["queries"] = q.to(keys.dtype).contiguous()
        if "attention_sums" in needs:
            if attentions is None:
                raise kvevict.KvevictError(
                    "kvevict: invalid argument in 'attentions': H2O needs the attention probabilities "
                    "(load the model with attn_implementation=\"eager\")", "invalid argument", "attentions")
            n_in_sum = torch.arange(k_len, 0, -1, device=attentions.device, dtype=torch.float32)
            sig["attention_sums"] = (attentions.float().sum(2) / n_in_sum).contiguous()
        if "token_ids" in needs:
            ids = self._input_ids
            if ids is None or ids.shape[-1] != k_len:
                raise kvevict.KvevictError(
                    "kvevict: shape mismatch in 'token_ids': the press saw no input_ids of this prefill's length "
                    "(call the model with input_ids, not inputs_embeds)", "shape mismatch", "token_ids")
            sig["token_ids"] = ids.reshape(bsz, k_len).to(torch.int32).contiguous()
        return sig

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        if self.compression_ratio == 0:
            return keys, values
        bsz, kv_heads, k_len, _ = keys.shape
        sig = self._signals(module, hidden_states, keys, attentions, kwargs)
        sig["seq_budgets"] = torch.full((bsz,), self.budget(module, k_len), dtype=torch.int32)
        if not keys.is_contiguous():
            keys = keys.contiguous()
        if not values.is_contiguous():
            values = values.contiguous()
        cache = kvevict.DenseCache(keys, values, torch.full((bsz,), k_len, dtype=torch.int32))
        if self.policy.kind == "ada_snapkv":
            if keys.is_cuda:  # planned on the host backend (the cache is not written): see the module's note
                cache = kvevict.DenseCache(keys.cpu(), values.cpu(), cache.seq_lens.cpu())
                sig = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in sig.items()}
            plan = kvevict.plan(self.policy, cache, **sig)
            keep = torch.zeros(bsz * kv_heads, k_len, dtype=torch.bool)
            rows = torch.arange(bsz * kv_heads).repeat_interleave(plan.counts.long())
            cols = torch.cat([plan.kept(r).long() for r in range(bsz * kv_heads)])
            keep[rows, cols] = True
            b, h, t = (~keep.view(bsz, kv_heads, k_len)).nonzero(as_tuple=True)
            module.masked_key_indices = (b.to(keys.device), h.to(keys.device), t.to(keys.device))
            self.plans[module.layer_idx] = plan
            return keys, values
        plan, result = kvevict.evict(self.policy, cache, **sig)
        self.plans[module.layer_idx] = plan
        n = int(result.new_lens.max())
        # Every head of a dense cache keeps the same count here (uniform or per-layer budgets).
        return keys[:, :, :n], values[:, :, :n]


def delimiter_ids(tokenizer, marks: str = ".,;:?!\n") -> list:
    """Token ids of a tokenizer's tokens that end a clause or sentence: every vocabulary entry whose
    text, with the tokenizer's word-boundary markers stripped, is one of ``marks`` (for example
    ``.``, ``▁.``, ``Ġ,``, ``\\n``, ``Ċ``)."""
    marks = set(marks)
    ids = []
    for token, i in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token]).strip(" ") if token else ""
        if text and all(c in marks for c in text) and len(text) <= 2:
            ids.append(int(i))
    return sorted(ids)


def sentence_ids(tokenizer, marks: str = ".?!\n") -> list:
    """Token ids of a tokenizer's tokens that end a sentence (``delimiter_ids`` with sentence marks):
    pass them as ``sentence_ids`` to SABlock, beside ``delimiter_ids``, for its sentence level."""
    return delimiter_ids(tokenizer, marks)
