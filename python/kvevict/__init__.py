"""kvevict: KV-cache eviction policies over your own tensors.

Tensors cross into C++ by DLPack without copies: numpy arrays and torch tensors on the CPU run on
the host backend; torch tensors on a GPU run on the CUDA backend when the package was built with
CUDA (``kvevict.has_cuda``; ``pip install ./python -C cmake.define.KVEVICT_PY_CUDA=ON``), on the
tensors' device and PyTorch's current stream. Three cache layouts::

    DenseCache(k, v, seq_lens)                               # HF: [batch, kv_heads, tokens, head_dim]
    BlockTableCache(k, v, block_table, seq_lens)             # vLLM: [num_pages, page_size, kv_heads, head_dim]
    CSRPageCache(k, v, indptr, indices, last_page_len)       # FlashInfer (NHD)

dtypes float32, float16 and bfloat16. Policies take keyword arguments whose defaults are the C++
presets' (``kvevict.SnapKV().params`` shows them)::

    policy = kvevict.SnapKV(budget=256, window=32)
    plan = kvevict.plan(policy, cache, queries=q)           # which positions each (sequence, head) keeps
    result = kvevict.compact(cache, plan)                   # moves them to the front, in place
    plan, result = kvevict.evict(policy, cache, queries=q)  # both

A bad argument raises ``kvevict.KvevictError`` (a ValueError) with the library's message, and
nothing is written.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

from . import _ext
from .errors import KvevictError

__all__ = [
    "KvevictError", "Policy", "StreamingLLM", "H2O", "KNorm", "SnapKV", "PyramidKV", "AdaSnapKV", "ChunkKV",
    "SentenceKV", "SABlock", "DenseCache", "BlockTableCache", "CSRPageCache", "KeepPlan", "CompactResult", "plan",
    "compact", "evict", "has_cuda", "__version__",
]

__version__ = _ext.version
has_cuda = bool(_ext.has_cuda)


# ---------------------------------------------------------------------------------------------
# Policies


class Policy:
    """A policy: its kind and its parameters (the C++ preset's defaults, overridden by keywords)."""

    kind = ""
    #: what the policy reads besides the cache: "queries", "attention_sums", "token_ids"
    needs: tuple = ()

    def __init__(self, **kwargs: Any):
        defaults = _ext.defaults(self.kind)
        pool = kwargs.pop("pool", None)
        allowed = set(defaults) | ({"delimiter_ids", "sentence_ids"} if "min_len" in defaults else set())
        for key in kwargs:
            if key not in allowed:
                raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument '{key}' "
                                f"(parameters: {', '.join(sorted(allowed | self._pool_keys(defaults)))})")
        params = dict(defaults)
        params.update(kwargs)
        if pool is not None:
            if "kernel_size" not in defaults:
                raise TypeError(f"{type(self).__name__}() has no pooling")
            if pool == "none":
                if kwargs.get("kernel_size", 1) != 1:
                    raise KvevictError("kvevict: invalid argument in 'pool': pool='none' with kernel_size > 1",
                                       "invalid argument", "pool")
                params["kernel_size"] = 1
            elif pool != "avg":
                raise KvevictError(f"kvevict: invalid argument in 'pool': '{pool}' is not 'avg' or 'none'",
                                   "invalid argument", "pool")
        for ids in ("delimiter_ids", "sentence_ids"):
            if ids in params:
                params[ids] = [int(i) for i in params[ids]]
        self.params = params

    @staticmethod
    def _pool_keys(defaults):
        return {"pool"} if "kernel_size" in defaults else set()

    def __getattr__(self, name: str) -> Any:
        params = self.__dict__.get("params", {})
        if name in params:
            return params[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        return f"kvevict.{type(self).__name__}({args})"


class StreamingLLM(Policy):
    """Attention sinks plus the most recent tokens (Xiao et al. 2023)."""
    kind = "streaming_llm"


class H2O(Policy):
    """Accumulated attention (Zhang et al. 2023): pass ``attention_sums [seqs, q_heads, tokens]``."""
    kind = "h2o"
    needs = ("attention_sums",)


class KNorm(Policy):
    """Keys with the smallest L2 norm (Devoto et al. 2024)."""
    kind = "knorm"


class SnapKV(Policy):
    """Observation-window attention, average-pooled (``kernel_size``), GQA mean (Li et al. 2024)."""
    kind = "snapkv"
    needs = ("queries",)


class PyramidKV(Policy):
    """SnapKV scores with per-layer budgets (``beta``; pass ``layer`` and ``num_layers``)."""
    kind = "pyramidkv"
    needs = ("queries",)


class AdaSnapKV(Policy):
    """SnapKV scores with per-head budgets and a floor (Ada-KV); plans rows of different lengths."""
    kind = "ada_snapkv"
    needs = ("queries",)


class ChunkKV(Policy):
    """Fixed chunks of ``chunk`` tokens, heads shared, exactly the budget kept (Liu et al. 2025)."""
    kind = "chunkkv"
    needs = ("queries",)


class SentenceKV(Policy):
    """Whole segments between delimiters (``delimiter_ids``; pass ``token_ids``)."""
    kind = "sentencekv"
    needs = ("queries", "token_ids")


class SABlock(Policy):
    """Semantic-aware eviction with adaptive block sizes (``delimiter_ids``; pass ``token_ids``).

    With ``sentence_ids`` (the delimiters that end a sentence, e.g. from
    ``kvevict.kvpress.sentence_ids(tokenizer)``) clauses nest in sentences: ``beta`` guides tokens by
    their sentence's score and ``sentence_blocks`` lets a whole sentence be kept as one block."""
    kind = "sablock"
    needs = ("queries", "token_ids")


# ---------------------------------------------------------------------------------------------
# Caches


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _i32(x, name: str, like=None):
    """An int32, contiguous version of an index table, on the device of ``like`` (K) when K is a torch
    tensor (tables are small and may be copied; K and V never are)."""
    if x is None:
        return None
    if like is not None and _is_torch(like):
        import torch
        if not _is_torch(x):
            a = np.asarray(x)
            if a.dtype.kind not in "iu":
                raise KvevictError(f"kvevict: invalid argument in '{name}': must hold integers", "invalid argument",
                                   name)
            x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32))
        return x.to(device=like.device, dtype=torch.int32).contiguous()
    if _is_torch(x):
        import torch
        return x.to(torch.int32).contiguous()
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise KvevictError(f"kvevict: invalid argument in '{name}': must hold integers", "invalid argument", name)
    return np.ascontiguousarray(a, dtype=np.int32)


class DenseCache:
    """HF-style dense cache: ``k``, ``v`` ``[batch, kv_heads, capacity, head_dim]``; ``seq_lens [batch]``
    (default: every sequence fills the capacity). Compaction frees no pages; it returns new lengths."""

    layout = "dense"

    def __init__(self, k, v, seq_lens=None):
        self.k, self.v = k, v
        if seq_lens is None:
            seq_lens = np.full(k.shape[0], k.shape[2], dtype=np.int32)
        self.seq_lens = _i32(seq_lens, "seq_lens", k)

    def _tensors(self):
        return (self.k, self.v, self.seq_lens)


class BlockTableCache:
    """vLLM-style paged cache: ``k``, ``v`` ``[num_pages, page_size, kv_heads, head_dim]``,
    ``block_table [num_seqs, max_pages]``, ``seq_lens [num_seqs]``."""

    layout = "block_table"

    def __init__(self, k, v, block_table, seq_lens):
        self.k, self.v = k, v
        self.block_table = _i32(block_table, "block_table", k)
        self.seq_lens = _i32(seq_lens, "seq_lens", k)

    def _tensors(self):
        return (self.k, self.v, self.block_table, self.seq_lens)


class CSRPageCache:
    """FlashInfer-style paged cache (NHD): ``k``, ``v`` ``[num_pages, page_size, kv_heads, head_dim]``,
    ``indptr [num_seqs + 1]``, ``indices``, ``last_page_len [num_seqs]``."""

    layout = "csr"

    def __init__(self, k, v, indptr, indices, last_page_len):
        self.k, self.v = k, v
        self.indptr = _i32(indptr, "indptr", k)
        self.indices = _i32(indices, "indices", k)
        self.last_page_len = _i32(last_page_len, "last_page_len", k)

    def _tensors(self):
        return (self.k, self.v, self.indptr, self.indices, self.last_page_len)


# ---------------------------------------------------------------------------------------------
# Calls


class KeepPlan(NamedTuple):
    """Row ``r = seq * kv_heads + head`` keeps ``positions[r, :counts[r]]`` (increasing)."""
    positions: Any  # [rows, capacity] int32
    counts: Any     # [rows] int32

    def kept(self, row: int):
        """The positions row ``row`` keeps."""
        return self.positions[row, : int(self.counts[row])]


class CompactResult(NamedTuple):
    """New length of every (sequence, head) row, and the page ids the compaction freed."""
    new_lens: Any     # [rows] int32
    freed_pages: Any  # [num_freed] int32


def _check_cache(cache):
    if not isinstance(cache, (DenseCache, BlockTableCache, CSRPageCache)):
        raise KvevictError("kvevict: invalid argument in 'cache': must be a DenseCache, BlockTableCache or "
                           "CSRPageCache", "invalid argument", "cache")


def _check_policy(policy):
    if not isinstance(policy, Policy):
        raise KvevictError("kvevict: invalid argument in 'policy': must be a kvevict policy (kvevict.SnapKV(...), ...)",
                           "invalid argument", "policy")


def _signals(cache, queries, attention_sums, token_ids, layer, num_layers, seq_budgets, seq_sinks, seq_windows,
             threads):
    sig = {"layer": int(layer), "num_layers": int(num_layers), "threads": int(threads or 0)}
    if queries is not None:
        sig["queries"] = queries
    if attention_sums is not None:
        sig["attention_sums"] = attention_sums
    for name, table in (("token_ids", token_ids), ("seq_budgets", seq_budgets), ("seq_sinks", seq_sinks),
                        ("seq_windows", seq_windows)):
        if table is not None:
            sig[name] = _i32(table, name, cache.k)
    return sig


def _like(cache, a):
    """Outputs as torch tensors when the cache is torch's (zero-copy), numpy arrays otherwise."""
    if a is None or not _is_torch(cache.k) or _is_torch(a):
        return a
    import torch
    return torch.from_numpy(a)


def _on_cuda(cache) -> bool:
    return _is_torch(cache.k) and cache.k.is_cuda and has_cuda


def _call(kind, params, cache, sig, do_plan, do_compact, positions=None, counts=None):
    """One call on the cache's device: the host backend, or (CUDA tensors) the CUDA backend with its
    outputs and workspace allocated by PyTorch on that device, on PyTorch's current stream. A CUDA
    call waits for its stream, so that a bad argument found on the device raises here."""
    args = (cache.layout, kind, params, cache._tensors(), sig, do_plan, do_compact, positions, counts)
    if not _on_cuda(cache):
        return _ext.call(*args)
    import torch
    dev = cache.k.device
    with torch.cuda.device(dev):
        rows, capacity, max_freed, workspace_bytes = _ext.cuda_sizes(*args)
        i32 = {"dtype": torch.int32, "device": dev}
        pos = torch.empty((rows, capacity), **i32) if do_plan else None
        cnt = torch.empty((rows,), **i32) if do_plan else None
        lens = torch.empty((rows,), **i32) if do_compact else None
        freed = torch.empty((max(max_freed, 1),), **i32) if do_compact else None
        num_freed = torch.zeros((1,), **i32) if do_compact else None
        workspace = torch.empty((max(workspace_bytes, 1),), dtype=torch.uint8, device=dev)
        _ext.cuda_call(*args, (pos, cnt, lens, freed, num_freed), workspace, torch.cuda.current_stream(dev).cuda_stream)
    if do_compact:
        freed = freed[: int(num_freed.item())]
    return pos, cnt, lens, freed


def plan(policy: Policy, cache, *, queries=None, attention_sums=None, token_ids=None, layer: int = 0,
         num_layers: int = 1, seq_budgets=None, seq_sinks=None, seq_windows=None, threads: int = 0) -> KeepPlan:
    """The positions every (sequence, KV head) keeps. Reads the cache, writes nothing to it.

    ``queries``: the last ``window`` queries of every query head, rotary applied, newest last,
    ``[num_seqs, num_q_heads, rows, head_dim]`` in the cache's dtype (window-attention policies).
    ``attention_sums``: float32 ``[num_seqs, num_q_heads, tokens]`` (H2O). ``token_ids``:
    ``[num_seqs, tokens]`` (SentenceKV, SABlock). ``layer``/``num_layers``: PyramidKV's layer.
    ``seq_budgets``/``seq_sinks``/``seq_windows``: per-sequence overrides ``[num_seqs]``.
    ``threads``: host threads that score the heads (0: every hardware thread); the plan does not
    depend on it. The GIL is released while the library runs.
    """
    _check_policy(policy)
    _check_cache(cache)
    sig = _signals(cache, queries, attention_sums, token_ids, layer, num_layers, seq_budgets, seq_sinks, seq_windows,
                   threads)
    pos, cnt, _, _ = _call(policy.kind, policy.params, cache, sig, True, False)
    return KeepPlan(_like(cache, pos), _like(cache, cnt))


def compact(cache, plan: KeepPlan) -> CompactResult:
    """Moves every row's kept entries to its front, in order, in place; frees whole pages.

    Returns the new length of every (sequence, head) row and the freed page ids (paged layouts);
    the caller sets its lengths from ``new_lens`` and returns ``freed_pages`` to its allocator.
    """
    _check_cache(cache)
    if not isinstance(plan, KeepPlan):
        raise KvevictError("kvevict: invalid argument in 'plan': must be a KeepPlan (from kvevict.plan)",
                           "invalid argument", "plan")
    positions, counts = _i32(plan.positions, "plan.positions", cache.k), _i32(plan.counts, "plan.counts", cache.k)
    _, _, lens, freed = _call("", {}, cache, {}, False, True, positions, counts)
    return CompactResult(_like(cache, lens), _like(cache, freed))


def evict(policy: Policy, cache, *, queries=None, attention_sums=None, token_ids=None, layer: int = 0,
          num_layers: int = 1, seq_budgets=None, seq_sinks=None, seq_windows=None, threads: int = 0):
    """``plan`` then ``compact`` in one call; returns ``(KeepPlan, CompactResult)``."""
    _check_policy(policy)
    _check_cache(cache)
    sig = _signals(cache, queries, attention_sums, token_ids, layer, num_layers, seq_budgets, seq_sinks, seq_windows,
                   threads)
    pos, cnt, lens, freed = _call(policy.kind, policy.params, cache, sig, True, True)
    return (KeepPlan(_like(cache, pos), _like(cache, cnt)), CompactResult(_like(cache, lens), _like(cache, freed)))
