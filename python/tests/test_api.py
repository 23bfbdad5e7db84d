"""The package's own API: layouts, dtypes, zero-copy, errors that write nothing."""

import numpy as np
import pytest

import kvevict

RNG = np.random.default_rng(7)
KVH, QH, D, W = 2, 4, 16, 8


def snapkv_reference(k, q, budget, window, kernel):
    """kvpress's SnapKV on one sequence, in numpy (float64): k [kvh, n, d], q [qh, w, d]."""
    kvh, n, d = k.shape
    g = q.shape[0] // kvh
    scores = np.zeros((kvh, n - window))
    for h in range(q.shape[0]):
        logits = q[h].astype(np.float64) @ k[h // g].astype(np.float64).T / np.sqrt(d)  # [w, n]
        mask = np.zeros((window, n))
        mask[:, n - window:] = np.triu(np.full((window, window), -np.inf), 1)
        p = np.exp(logits + mask - (logits + mask).max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        s = p[:, : n - window].mean(0)
        pad = np.concatenate([np.zeros(kernel // 2), s, np.zeros(kernel // 2)])
        scores[h // g] += np.convolve(pad, np.ones(kernel) / kernel, mode="valid")[: n - window] / g
    kept = []
    for h in range(kvh):
        order = sorted(range(n - window), key=lambda t: (-scores[h, t], t))[: budget - window]
        kept.append(sorted(order) + list(range(n - window, n)))
    return kept


def dense(n=300, batch=1, dtype=np.float32):
    k = RNG.standard_normal((batch, KVH, n, D)).astype(dtype)
    v = RNG.standard_normal((batch, KVH, n, D)).astype(dtype)
    q = RNG.standard_normal((batch, QH, W, D)).astype(dtype)
    return k, v, q


def paged(k, v, page_size=16, shuffle=True):
    """The same sequences in a vLLM-style block table and a FlashInfer-style CSR table."""
    batch, kvh, n, d = k.shape
    per_seq = -(-n // page_size)
    num_pages = batch * per_seq + 3
    ids = RNG.permutation(num_pages)[: batch * per_seq] if shuffle else np.arange(batch * per_seq)
    kp = np.zeros((num_pages, page_size, kvh, d), k.dtype)
    vp = np.zeros_like(kp)
    table = ids.reshape(batch, per_seq).astype(np.int32)
    for s in range(batch):
        for t in range(n):
            kp[table[s, t // page_size], t % page_size] = k[s, :, t]
            vp[table[s, t // page_size], t % page_size] = v[s, :, t]
    indptr = np.arange(batch + 1, dtype=np.int32) * per_seq
    last = np.full(batch, n - (per_seq - 1) * page_size, np.int32)
    return kp, vp, table, indptr, last


def test_defaults_are_the_cpp_presets():
    p = kvevict.SnapKV()
    assert (p.budget, p.sinks, p.window, p.kernel_size) == (128, 4, 32, 5)
    assert kvevict.SABlock().params["alpha"] == 0.25 and kvevict.SABlock().g == 2.0
    assert kvevict.SABlock().beta == 0.25 and kvevict.SABlock().sentence_blocks is True
    assert kvevict.SABlock().sentence_max_len == 256
    assert kvevict.ChunkKV().chunk == 10 and kvevict.ChunkKV().kernel_size == 1
    assert kvevict.SnapKV(pool="none").kernel_size == 1
    with pytest.raises(TypeError, match="bugdet"):
        kvevict.SnapKV(bugdet=3)


@pytest.mark.parametrize("kernel", [1, 5])
def test_snapkv_plan_matches_a_numpy_reference(kernel):
    k, v, q = dense(300)
    plan = kvevict.plan(kvevict.SnapKV(budget=60, sinks=0, window=W, kernel_size=kernel), kvevict.DenseCache(k, v),
                        queries=q)
    ref = snapkv_reference(k[0], q[0], 60, W, kernel)
    for h in range(KVH):
        assert plan.kept(h).tolist() == ref[h]


POLICIES = [
    kvevict.StreamingLLM(budget=64, window=W),
    kvevict.KNorm(budget=64, window=W),
    kvevict.SnapKV(budget=64, window=W),
    kvevict.PyramidKV(budget=64, window=W),
    kvevict.ChunkKV(budget=64, window=W),
    kvevict.SentenceKV(budget=64, window=W, delimiter_ids=[1, 2]),
    kvevict.SABlock(budget=64, window=W, delimiter_ids=[1, 2]),
    kvevict.H2O(budget=64, window=W),
]


def signals_for(policy, q, n, batch):
    sig = {"queries": q}
    if "token_ids" in policy.needs:
        ids = RNG.integers(3, 100, (batch, n)).astype(np.int32)
        ids[:, ::7] = 1
        sig["token_ids"] = ids
    if "attention_sums" in policy.needs:
        sig["attention_sums"] = RNG.random((batch, QH, n)).astype(np.float32)
    return sig


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.kind)
def test_layouts_agree_and_compaction_is_a_gather(policy):
    batch, n = 2, 200
    k, v, q = dense(n, batch)
    sig = signals_for(policy, q, n, batch)
    kp, vp, table, indptr, last = paged(k, v)
    lens = np.full(batch, n, np.int32)
    caches = [
        kvevict.DenseCache(k.copy(), v.copy(), lens),
        kvevict.BlockTableCache(kp.copy(), vp.copy(), table, lens),
        kvevict.CSRPageCache(kp.copy(), vp.copy(), indptr, table.reshape(-1), last),
    ]
    plans = [kvevict.plan(policy, c, **sig) for c in caches]
    for p in plans[1:]:
        np.testing.assert_array_equal(p.counts, plans[0].counts)
        np.testing.assert_array_equal(p.positions, plans[0].positions)
    assert (plans[0].counts == 64).all()
    for c in caches:
        plan, res = kvevict.evict(policy, c, **sig)
        np.testing.assert_array_equal(plan.positions, plans[0].positions)
        assert (res.new_lens == 64).all()
        for s in range(batch):
            for h in range(KVH):
                kept = plans[0].kept(s * KVH + h)
                for j, t in enumerate(kept):
                    if c.layout == "dense":
                        got = c.k[s, h, j]
                    else:
                        got = c.k[table[s, j // 16], j % 16, h]
                    np.testing.assert_array_equal(got, k[s, h, t])
        if c.layout != "dense":  # 13 pages of 16 hold 200 tokens, 4 hold 64
            assert len(res.freed_pages) == batch * (13 - 4)
            assert set(res.freed_pages.tolist()) == set(table[:, 4:].reshape(-1).tolist())
        else:
            assert len(res.freed_pages) == 0


def test_compact_takes_a_plan():
    k, v, q = dense(120)
    cache = kvevict.DenseCache(k, v)
    plan = kvevict.plan(kvevict.SnapKV(budget=40, window=W), cache, queries=q)
    before = k.copy()
    res = kvevict.compact(cache, plan)
    assert (res.new_lens == 40).all()
    np.testing.assert_array_equal(k[0, 1, :40], before[0, 1, plan.kept(1)])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_types_through_torch_without_copies(dtype):
    torch = pytest.importorskip("torch")
    t = getattr(torch, dtype)
    k, v, q = (torch.from_numpy(a).to(t) for a in dense(150))
    cache = kvevict.DenseCache(k, v)
    ref = kvevict.plan(kvevict.SnapKV(budget=50, window=W), kvevict.DenseCache(k.float(), v.float()),
                       queries=q.float())
    plan, res = kvevict.evict(kvevict.SnapKV(budget=50, window=W), cache, queries=q)
    assert isinstance(plan.positions, torch.Tensor) and plan.positions.dtype == torch.int32
    assert (res.new_lens == 50).all()
    # the kept keys moved inside the caller's own tensor (no copy crossed the boundary)
    assert cache.k.data_ptr() == k.data_ptr()
    # half-precision keys round their scores differently: most positions agree with float32's plan
    same = len(set(plan.kept(0).tolist()) & set(ref.kept(0).tolist()))
    assert same >= 45


def test_numpy_float16():
    k, v, q = dense(100, dtype=np.float16)
    plan = kvevict.plan(kvevict.SnapKV(budget=30, window=W), kvevict.DenseCache(k, v), queries=q)
    assert (plan.counts == 30).all()


def _snapshot(a):
    return a.clone() if hasattr(a, "clone") else a.copy()


def _same(a, b):
    return bool((a == b).all()) if hasattr(a, "clone") else np.array_equal(a, b)


def expect_error(fn, argument, *caches):
    """``fn()`` raises the library's error naming ``argument`` and leaves every cache's K and V (numpy
    arrays or torch tensors, on any device) unchanged."""
    snapshots = [(_snapshot(c.k), _snapshot(c.v)) for c in caches]
    with pytest.raises(kvevict.KvevictError) as e:
        fn()
    assert e.value.argument == argument, str(e.value)
    assert str(e.value).startswith("kvevict: ")
    for c, (k, v) in zip(caches, snapshots):
        assert _same(c.k, k) and _same(c.v, v)  # nothing written
    return e.value


def test_errors_name_the_argument_and_write_nothing():
    k, v, q = dense(100)
    cache = kvevict.DenseCache(k, v)
    snap = kvevict.SnapKV(budget=40, window=W)
    e = expect_error(lambda: kvevict.evict(kvevict.SnapKV(budget=5, window=W), cache, queries=q),
                     "selector.budget.entries", cache)
    assert e.code == "budget too small"
    expect_error(lambda: kvevict.evict(snap, cache), "signals.queries", cache)
    expect_error(lambda: kvevict.evict(snap, cache, queries=q.astype(np.float16)), "queries", cache)
    expect_error(lambda: kvevict.evict(snap, cache, queries=q[:, :3]), "signals.num_q_heads", cache)
    expect_error(lambda: kvevict.evict(snap, kvevict.DenseCache(k[:, :, ::2], v[:, :, ::2]), queries=q), "k", cache)
    expect_error(lambda: kvevict.evict(snap, kvevict.DenseCache(k, v, [101]), queries=q), "cache.seq_lens", cache)
    expect_error(lambda: kvevict.evict(snap, kvevict.DenseCache(k, v[:, :1]), queries=q), "v", cache)
    ids = np.ones((1, 100), np.int32)
    expect_error(lambda: kvevict.evict(kvevict.SABlock(budget=40, window=W), cache, queries=q, token_ids=ids),
                 "segmenter.delimiter_ids", cache)
    expect_error(lambda: kvevict.evict(kvevict.SABlock(budget=40, window=W, delimiter_ids=[1]), cache, queries=q),
                 "signals.token_ids", cache)
    expect_error(lambda: kvevict.evict(kvevict.SABlock(budget=40, window=W, alpha=2.0, delimiter_ids=[1]), cache,
                                       queries=q, token_ids=ids), "granularity.alpha", cache)
    expect_error(lambda: kvevict.evict(kvevict.SABlock(budget=40, window=W, alpha=0.7, beta=0.5, delimiter_ids=[1]),
                                       cache, queries=q, token_ids=ids), "granularity.alpha + beta", cache)
    expect_error(lambda: kvevict.evict(kvevict.SABlock(budget=40, window=W, sentence_max_len=0, delimiter_ids=[1],
                                                       sentence_ids=[1]), cache, queries=q, token_ids=ids),
                 "segmenter.sentence_min_len / sentence_max_len", cache)
    expect_error(lambda: kvevict.evict("snapkv", cache, queries=q), "policy", cache)
    expect_error(lambda: kvevict.evict(snap, (k, v), queries=q), "cache", cache)
    # a plan that is not increasing
    plan = kvevict.plan(snap, cache, queries=q)
    bad = kvevict.KeepPlan(plan.positions[:, ::-1].copy(), plan.counts)
    expect_error(lambda: kvevict.compact(cache, bad), "plan.positions", cache)
    # a plan for one head of two
    short = kvevict.KeepPlan(plan.positions[:1].copy(), plan.counts[:1].copy())
    expect_error(lambda: kvevict.compact(cache, short), "plan.rows", cache)
    # read-only K cannot be compacted, but can be planned
    ro_k, ro_v = k.copy(), v.copy()
    ro_k.flags.writeable = False
    ro = kvevict.DenseCache(ro_k, ro_v)
    expect_error(lambda: kvevict.evict(snap, ro, queries=q), "k", cache)
    assert (kvevict.plan(snap, ro, queries=q).counts == 40).all()


def test_paged_errors_write_nothing():
    k, v, q = dense(100)
    kp, vp, table, indptr, last = paged(k, v)
    snap = kvevict.SnapKV(budget=40, window=W)
    bad_table = table.copy()
    bad_table[0, 2] = kp.shape[0]  # a page id past the pool
    c = kvevict.BlockTableCache(kp, vp, bad_table, [100])
    expect_error(lambda: kvevict.evict(snap, c, queries=q), "cache.block_table", c)
    c = kvevict.CSRPageCache(kp, vp, indptr, table.reshape(-1), [17])
    expect_error(lambda: kvevict.evict(snap, c, queries=q), "cache.last_page_len", c)
    c = kvevict.CSRPageCache(kp, vp, indptr, table.reshape(-1)[:3], last)
    expect_error(lambda: kvevict.evict(snap, c, queries=q), "indices", c)
    c = kvevict.BlockTableCache(kp, vp, table, [100])
    e = expect_error(lambda: kvevict.evict(snap, c, queries=q, seq_windows=[W + 1]), "signals.seq_windows", c)
    assert e.code == "out of range"


def test_per_head_budgets_plan_rows_of_different_lengths():
    k, v, q = dense(300)
    k[0, 1] *= 0.2  # flatter attention on head 1
    plan = kvevict.plan(kvevict.AdaSnapKV(budget=60, window=W), kvevict.DenseCache(k, v), queries=q)
    assert int(plan.counts.sum()) == 2 * 60
    assert plan.counts[0] != plan.counts[1]  # the heads share the budget unevenly
    # a dense cache keeps one length per sequence: compaction refuses rows of different lengths
    cache = kvevict.DenseCache(k, v)
    expect_error(lambda: kvevict.compact(cache, plan), "plan.counts", cache)


def test_threads_do_not_change_the_plan():
    k, v, q = dense(700, batch=2)
    policy = kvevict.SnapKV(budget=100, window=W)
    one = kvevict.plan(policy, kvevict.DenseCache(k, v), queries=q, threads=1)
    for t in (0, 2, 5):
        other = kvevict.plan(policy, kvevict.DenseCache(k, v), queries=q, threads=t)
        np.testing.assert_array_equal(one.positions, other.positions)
    with pytest.raises(kvevict.KvevictError, match="threads"):
        kvevict.plan(policy, kvevict.DenseCache(k, v), queries=q, threads=-1)


def test_sablock_sentence_level():
    """One level (no sentence ids): the defaults plan as version 1 (alpha 0.5, no sentence terms);
    with sentence ids the sentence level changes the plan."""
    k, v, q = dense(400)
    ids = RNG.integers(4, 40, size=(1, 400)).astype(np.int32)
    ids[0, RNG.random(400) < 0.08] = 1  # sentence ends
    ids[0, RNG.random(400) < 0.08] = 2  # clause ends
    cache = kvevict.DenseCache(k, v)
    one = kvevict.plan(kvevict.SABlock(budget=80, window=W, delimiter_ids=[1, 2]), cache, queries=q, token_ids=ids)
    v1 = kvevict.plan(kvevict.SABlock(budget=80, window=W, delimiter_ids=[1, 2], alpha=0.5, beta=0.0,
                                      sentence_blocks=False), cache, queries=q, token_ids=ids)
    assert all(one.kept(h).tolist() == v1.kept(h).tolist() for h in range(KVH))
    two = kvevict.plan(kvevict.SABlock(budget=80, window=W, delimiter_ids=[1, 2], sentence_ids=[1]), cache,
                       queries=q, token_ids=ids)
    assert all(len(two.kept(h)) == 80 for h in range(KVH))
    assert any(two.kept(h).tolist() != one.kept(h).tolist() for h in range(KVH))


def test_knobs_are_numbers_and_integer_knobs_whole_numbers():
    k, v, q = dense(100)
    cache = kvevict.DenseCache(k, v)
    expect_error(lambda: kvevict.plan(kvevict.SnapKV(budget=40.5, window=W), cache, queries=q), "budget", cache)
    expect_error(lambda: kvevict.plan(kvevict.SnapKV(budget="40", window=W), cache, queries=q), "budget", cache)
    expect_error(lambda: kvevict.plan(kvevict.SnapKV(budget=2**40, window=W), cache, queries=q), "budget", cache)
    # a whole float is the integer; a float knob takes an int
    assert (kvevict.plan(kvevict.SnapKV(budget=40.0, window=W), cache, queries=q).counts == 40).all()
    plan = kvevict.plan(kvevict.SABlock(budget=40, window=W, g=2, delimiter_ids=[1]), cache, queries=q,
                        token_ids=np.ones((1, 100), np.int32))
    assert (plan.counts == 40).all()


def test_index_tables_follow_k_into_torch():
    torch = pytest.importorskip("torch")
    k, v, q = dense(100)
    cache = kvevict.DenseCache(torch.from_numpy(k), torch.from_numpy(v), [100])
    assert isinstance(cache.seq_lens, torch.Tensor) and cache.seq_lens.dtype == torch.int32
    plan = kvevict.plan(kvevict.SnapKV(budget=40, window=W), cache, queries=torch.from_numpy(q),
                        seq_budgets=np.array([30]))
    assert isinstance(plan.positions, torch.Tensor) and (plan.counts == 30).all()
