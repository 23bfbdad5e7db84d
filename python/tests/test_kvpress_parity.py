"""kvevict's press against kvpress's own presses on a small random Llama-style model.

For every layer and KV head the kept token set must equal kvpress's, and greedy generation after
compression must produce the same tokens. Where kvpress differs by design, the test pins the
difference down (PyramidKV's layer budgets, Ada-KV's safeguard, ChunkKV's rounding to chunks).
SentenceKV and SABlock have no kvpress press: the press is checked against kvevict.plan on
inputs the test computes itself.
"""

import pytest

torch = pytest.importorskip("torch")
kvpress = pytest.importorskip("kvpress")

from transformers import DynamicCache  # noqa: E402
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # noqa: E402

import kvevict  # noqa: E402
from kvevict.kvpress import KvevictPress  # noqa: E402

from conftest import make_model  # noqa: E402

LENGTHS = [400, 1500]
RATIO = 0.5
WINDOW = 64
DELIMS = [1, 2, 3]  # the random model's "." "," "\n"


def prompt(n, seed=1):
    g = torch.Generator().manual_seed(seed + n)
    return torch.randint(10, 512, (1, n), generator=g)


def prompt_with_clauses(n, seed=2):
    """Random tokens with a delimiter every 4 to 40 tokens."""
    g = torch.Generator().manual_seed(seed + n)
    ids = torch.randint(10, 512, (1, n), generator=g)
    pos = 0
    while True:
        pos += int(torch.randint(4, 41, (1,), generator=g))
        if pos >= n:
            break
        ids[0, pos] = DELIMS[int(torch.randint(0, 3, (1,), generator=g))]
    return ids


def prefill(model, ids, press=None):
    cache = DynamicCache()
    with torch.no_grad():
        if press is None:
            model.model(input_ids=ids, past_key_values=cache)
        else:
            with press(model):
                model.model(input_ids=ids, past_key_values=cache)
    return cache


def kept_positions(orig_keys, comp_keys):
    """Which original positions a compressed layer holds, per KV head (keys are distinct vectors)."""
    out = []
    for h in range(orig_keys.shape[1]):
        eq = (comp_keys[0, h][:, None, :] == orig_keys[0, h][None, :, :]).all(-1)
        assert bool((eq.sum(1) == 1).all()), "a compressed key matches no single original key"
        out.append(sorted(eq.nonzero()[:, 1].tolist()))
    return out


def masked_kept(model, k_len):
    """Kept positions per layer and head of a masking press (Ada-KV): the complement of the mask."""
    out = []
    for layer in model.model.layers:
        b, h, t = layer.self_attn.masked_key_indices
        keep = torch.ones(model.config.num_key_value_heads, k_len, dtype=torch.bool)
        keep[h.cpu(), t.cpu()] = False
        out.append([keep[i].nonzero()[:, 0].tolist() for i in range(keep.shape[0])])
    return out


def all_kept(model, ids, press):
    orig = prefill(model, ids)
    comp = prefill(model, ids, press)
    return [kept_positions(orig.layers[i].keys, comp.layers[i].keys) for i in range(len(orig.layers))], comp


def greedy(model, ids, press, question, steps=8):
    """As kvpress's pipeline: prefill under the press, then the question and greedy tokens at text
    positions after the context (not after the compressed cache's length)."""
    cache = prefill(model, ids, press)
    n = ids.shape[1]
    tokens, logits = [], []
    with torch.no_grad():
        # One token per step: layers of a PyramidKV cache hold different lengths, which a
        # multi-token step's causal mask (built from layer 0's length) cannot describe.
        for i in range(question.shape[1]):
            out = model(input_ids=question[:, i : i + 1], past_key_values=cache, position_ids=torch.tensor([[n + i]]))
        for i in range(steps):
            logits.append(out.logits[0, -1])
            tokens.append(int(out.logits[0, -1].argmax()))
            pos = torch.tensor([[n + question.shape[1] + i]])
            out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=cache, position_ids=pos)
    return tokens, torch.stack(logits)


def check_generation(model, ids, theirs, ours):
    question = torch.tensor([[5, 6, 7, 8]])
    t_theirs, l_theirs = greedy(model, ids, theirs, question)
    t_ours, l_ours = greedy(model, ids, ours, question)
    t_full, _ = greedy(model, ids, None, question)
    assert t_ours == t_theirs
    torch.testing.assert_close(l_ours, l_theirs, rtol=1e-4, atol=1e-4)
    return t_full


def assert_same_kept(model, ids, theirs, ours):
    k_theirs, _ = all_kept(model, ids, theirs)
    k_ours, _ = all_kept(model, ids, ours)
    assert len(k_ours) == model.config.num_hidden_layers
    for layer, (a, b) in enumerate(zip(k_theirs, k_ours)):
        assert a == b, f"layer {layer}: kept sets differ"
    return k_ours


@pytest.mark.parametrize("n", LENGTHS)
def test_streaming_llm(model, n):
    ids = prompt(n)
    theirs = kvpress.StreamingLLMPress(compression_ratio=RATIO, n_sink=4)
    ours = KvevictPress(kvevict.StreamingLLM(sinks=4, window=0), compression_ratio=RATIO)
    kept = assert_same_kept(model, ids, theirs, ours)
    assert kept[0][0][:4] == [0, 1, 2, 3] and kept[0][0][-1] == n - 1
    check_generation(model, ids, theirs, ours)


@pytest.mark.parametrize("n", LENGTHS)
def test_snapkv(model, n):
    ids = prompt(n)
    theirs = kvpress.SnapKVPress(compression_ratio=RATIO, window_size=WINDOW, kernel_size=5)
    ours = KvevictPress(kvevict.SnapKV(sinks=0, window=WINDOW, kernel_size=5), compression_ratio=RATIO)
    kept = assert_same_kept(model, ids, theirs, ours)
    assert all(len(h) == int(n * (1 - RATIO)) for layer in kept for h in layer)
    check_generation(model, ids, theirs, ours)


@pytest.mark.parametrize("n", LENGTHS)
def test_knorm(model, n):
    """Same sets, except where two keys' float32 norms tie exactly at the cut: kvevict keeps the
    lower position (its contract), torch's top-k keeps either. The test pins that down."""
    ids = prompt(n)
    theirs = kvpress.KnormPress(compression_ratio=RATIO)
    ours = KvevictPress(kvevict.KNorm(sinks=0, window=0), compression_ratio=RATIO)
    k_theirs, _ = all_kept(model, ids, theirs)
    k_ours, _ = all_kept(model, ids, ours)
    orig = prefill(model, ids)
    for layer, (a, b) in enumerate(zip(k_theirs, k_ours)):
        scores = theirs.score(None, None, orig.layers[layer].keys, None, None, None)[0]  # -||k||, float32
        for h, (sa, sb) in enumerate(zip(a, b)):
            assert len(sa) == len(sb)
            only_theirs, only_ours = sorted(set(sa) - set(sb)), sorted(set(sb) - set(sa))
            for p, q in zip(only_theirs, only_ours):
                assert scores[h, p] == scores[h, q] and q < p, f"layer {layer} head {h}: not a tie"
    if k_ours == k_theirs:
        check_generation(model, ids, theirs, ours)


@pytest.mark.parametrize("n", LENGTHS)
def test_observed_attention_h2o(eager_model, n):
    ids = prompt(n)
    theirs = kvpress.ObservedAttentionPress(compression_ratio=RATIO)
    ours = KvevictPress(kvevict.H2O(sinks=0, window=0), compression_ratio=RATIO)
    assert_same_kept(eager_model, ids, theirs, ours)
    check_generation(eager_model, ids, theirs, ours)


def test_h2o_without_eager_attention_is_a_clear_error(model):
    ours = KvevictPress(kvevict.H2O(sinks=0, window=0), compression_ratio=RATIO)
    with pytest.raises(kvevict.KvevictError, match="attn_implementation"):
        prefill(model, prompt(300), ours)


class KvpressLayerBudgets(KvevictPress):
    """kvevict's SnapKV with kvpress's PyramidKV layer budgets."""

    def budget(self, module, k_len):
        return kvpress.PyramidKVPress(compression_ratio=RATIO, window_size=WINDOW).get_layer_budget(module, k_len)


@pytest.mark.parametrize("n", LENGTHS)
def test_pyramidkv(model, n):
    ids = prompt(n)
    theirs = kvpress.PyramidKVPress(compression_ratio=RATIO, window_size=WINDOW, kernel_size=5)
    # Given kvpress's layer budgets, the selection is the same:
    with_their_budgets = KvpressLayerBudgets(kvevict.SnapKV(sinks=0, window=WINDOW), compression_ratio=RATIO)
    assert_same_kept(model, ids, theirs, with_their_budgets)
    check_generation(model, ids, theirs, with_their_budgets)


def test_pyramidkv_layer_budgets_differ_by_design(model):
    """kvpress spreads the pyramid over the whole budget with the window inside it and clips the
    bottom layer to the prompt; kvevict (as KVCache-Factory's PyramidKV) spreads the compressible
    part `budget - sinks - window`, floors, and adds the protected tokens to every layer."""
    n = 1500
    ids = prompt(n)
    ours = KvevictPress(kvevict.PyramidKV(sinks=0, window=WINDOW), compression_ratio=RATIO)
    kept, _ = all_kept(model, ids, ours)
    got = [len(layer[0]) for layer in kept]
    entries, layers = int(n * (1 - RATIO)), model.config.num_hidden_layers
    bc = entries - WINDOW
    lo = bc // 20
    hi = 2 * bc - lo
    expected = [WINDOW + int(hi - i * (hi - lo) / (layers - 1)) for i in range(layers)]
    assert got == expected  # 1402, 750, 98 at 1,500 tokens
    theirs = [kvpress.PyramidKVPress(compression_ratio=RATIO, window_size=WINDOW).get_layer_budget(layer.self_attn, n)
              for layer in model.model.layers]
    assert theirs == [1436, 750, 64]
    assert sum(got) / layers == pytest.approx(entries, abs=1)  # both average the budget over layers


@pytest.mark.parametrize("n", LENGTHS)
def test_adakv(model, n):
    ids = prompt(n)
    alpha = 0.2
    theirs = kvpress.AdaKVPress(kvpress.SnapKVPress(compression_ratio=RATIO, window_size=WINDOW), alpha_safeguard=alpha)
    # kvpress guarantees each head int(alpha * n_kept) entries counted with its window (which the
    # SnapKV scores pad with the maximum); kvevict guarantees floor(f * (budget - sinks - window))
    # of the compressible entries. The same guarantee in kvevict's terms:
    n_kept = int(n * (1 - RATIO))
    guaranteed = max(int(n_kept * alpha) - WINDOW, 0)
    f = (guaranteed + 0.5) / (n_kept - WINDOW)
    ours = KvevictPress(kvevict.AdaSnapKV(sinks=0, window=WINDOW, floor_fraction=f), compression_ratio=RATIO)
    prefill(model, ids, theirs)
    k_theirs = masked_kept(model, n)
    prefill(model, ids, ours)
    k_ours = masked_kept(model, n)
    assert k_ours == k_theirs
    counts = [len(h) for layer in k_ours for h in layer]
    assert len(set(counts)) > 1  # heads keep different numbers of entries
    assert sum(counts) == n_kept * len(counts)
    check_generation(model, ids, theirs, ours)


@pytest.mark.parametrize("n", [400, 1500])
def test_chunkkv(model, n):
    """With the window a whole number of chunks and the prompt too, kvpress's ChunkKV(SnapKV) keeps
    whole chunks of pooled SnapKV scores; kvevict's ChunkKV with the same scorer and the budget
    those chunks add up to keeps the same tokens."""
    chunk, window = 20, 60
    ids = prompt(n)
    theirs = kvpress.ChunkKVPress(kvpress.SnapKVPress(compression_ratio=RATIO, window_size=window), chunk_length=chunk)
    n_chunks_kept = max(1, int((n // chunk) * (1 - RATIO)))
    ours = KvevictPress(kvevict.ChunkKV(sinks=0, window=window, chunk=chunk, kernel_size=5,
                                        budget=n_chunks_kept * chunk))
    kept = assert_same_kept(model, ids, theirs, ours)
    assert all(len(h) == n_chunks_kept * chunk for layer in kept for h in layer)
    check_generation(model, ids, theirs, ours)


def test_chunkkv_rounding_differs_by_design(model):
    """kvpress keeps whole chunks (a short last chunk counts as one), so its count follows the
    chunks; kvevict keeps exactly the budget: whole chunks while they fit, then the best tokens."""
    n, chunk, window = 1510, 20, 60
    ids = prompt(n)
    theirs = kvpress.ChunkKVPress(kvpress.SnapKVPress(compression_ratio=RATIO, window_size=window), chunk_length=chunk)
    ours = KvevictPress(kvevict.ChunkKV(sinks=0, window=window, chunk=chunk, kernel_size=5), compression_ratio=RATIO)
    k_theirs, _ = all_kept(model, ids, theirs)
    k_ours, _ = all_kept(model, ids, ours)
    n_their = {len(h) for layer in k_theirs for h in layer}
    assert n_their <= {38 * chunk, 37 * chunk + 10}  # int(76 * 0.5) chunks, one of them maybe the 10-token tail
    assert {len(h) for layer in k_ours for h in layer} == {int(n * (1 - RATIO))}  # 755 exactly


def reference_plan(model, ids, policy):
    """kvevict.plan on keys and window queries the test computes itself, per layer."""
    captured = {}

    def hook(module, args, kwargs, output):
        captured[module.layer_idx] = (kwargs["hidden_states"], kwargs["position_embeddings"])

    handles = [layer.self_attn.register_forward_hook(hook, with_kwargs=True) for layer in model.model.layers]
    try:
        orig = prefill(model, ids)
    finally:
        for h in handles:
            h.remove()
    cfg, plans = model.config, []
    for i, layer in enumerate(model.model.layers):
        hs, (cos, sin) = captured[i]
        attn = layer.self_attn
        w = policy.window
        q = attn.q_proj(hs[:, -w:]).view(1, w, cfg.num_attention_heads, cfg.head_dim).transpose(1, 2)
        q, _ = apply_rotary_pos_emb(q, q, cos[:, -w:], sin[:, -w:])
        keys = orig.layers[i].keys
        cache = kvevict.DenseCache(keys.contiguous(), orig.layers[i].values.contiguous())
        plans.append(kvevict.plan(policy, cache, queries=q.contiguous(), token_ids=ids.to(torch.int32),
                                  layer=i, num_layers=cfg.num_hidden_layers))
    return plans


@pytest.mark.parametrize("kind", ["SentenceKV", "SABlock"])
@pytest.mark.parametrize("n", LENGTHS)
def test_segment_policies_through_the_press(model, kind, n):
    ids = prompt_with_clauses(n)
    policy = getattr(kvevict, kind)(sinks=4, window=32, budget=n // 4, delimiter_ids=DELIMS)
    press = KvevictPress(policy)
    kept, _ = all_kept(model, ids, press)
    expected = reference_plan(model, ids, policy)
    for layer, plan in enumerate(expected):
        for h in range(model.config.num_key_value_heads):
            assert kept[layer][h] == plan.kept(h).tolist(), f"layer {layer} head {h}"
            assert len(kept[layer][h]) == n // 4
    # greedy generation runs on the compacted cache
    tokens, _ = greedy(model, ids, press, torch.tensor([[5, 6, 7, 8]]))
    assert len(tokens) == 8


def test_sablock_differs_from_token_topk(model):
    """The press really runs SABlock: its kept set is not SnapKV's token top-k with the same scorer."""
    n = 1500
    ids = prompt_with_clauses(n)
    sab = KvevictPress(kvevict.SABlock(sinks=4, window=32, budget=375, delimiter_ids=DELIMS))
    tok = KvevictPress(kvevict.SnapKV(sinks=4, window=32, budget=375, kernel_size=1))
    k_sab, _ = all_kept(model, ids, sab)
    k_tok, _ = all_kept(model, ids, tok)
    assert k_sab != k_tok


def test_press_rejects_bad_arguments():
    with pytest.raises(kvevict.KvevictError, match="policy"):
        KvevictPress("snapkv")
    with pytest.raises(kvevict.KvevictError, match="compression_ratio"):
        KvevictPress(kvevict.SnapKV(), compression_ratio=1.5)


def word_tokenizer():
    """A real (fast, word-level) tokenizer built in memory: the random model has no vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "the quick brown fox jumps over lazy dog what , . ? !".split()
    vocab = {"[UNK]": 0, "[BOS]": 1, "[EOS]": 2, **{w: 3 + i for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]",
                                   model_max_length=4096)


def test_press_in_the_kvpress_pipeline(model):
    """The press works where kvpress presses do: its text-generation pipeline."""
    from kvpress import KVPressTextGenerationPipeline

    pipe = KVPressTextGenerationPipeline(model=model, tokenizer=word_tokenizer())
    press = KvevictPress(kvevict.SnapKV(sinks=0, window=16), compression_ratio=0.5)
    context = "the quick brown fox , jumps over the lazy dog . " * 20
    out = pipe(context, question=" what jumps ?", press=press, max_new_tokens=4)
    assert isinstance(out["answer"], str) and len(press.plans) == model.config.num_hidden_layers
    context_len = 1 + len(context.split())  # [BOS] and the words
    assert all(int(p.counts[0]) == context_len // 2 for p in press.plans.values())


def test_delimiter_ids_from_a_tokenizer():
    from kvevict.kvpress import delimiter_ids, sentence_ids

    tok = word_tokenizer()
    vocab = tok.get_vocab()
    assert delimiter_ids(tok) == sorted(vocab[w] for w in [",", ".", "?", "!"])
    assert sentence_ids(tok) == sorted(vocab[w] for w in [".", "?", "!"])
