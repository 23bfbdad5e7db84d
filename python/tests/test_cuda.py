"""The CUDA backend through the package: CUDA tensors plan on the GPU with the host backend's plans,
compact byte for byte as the host does, raise the library's errors and write nothing on a bad
argument. Runs where a GPU is present and the package was built with CUDA (KVEVICT_PY_CUDA=ON);
skipped elsewhere (CI has no GPU)."""

import numpy as np
import pytest

import kvevict

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not (kvevict.has_cuda and torch.cuda.is_available()),
                                reason="needs a GPU and the package built with CUDA (KVEVICT_PY_CUDA=ON)")

from test_api import POLICIES, W, dense, expect_error, paged, signals_for  # noqa: E402

DTYPES = ["float32", "float16", "bfloat16"]
N, BATCH, BUDGET = 200, 2, 64


def to(a, dtype, device):
    return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=getattr(torch, dtype))


def caches(k, v, dtype, device):
    """The same sequences as a dense, a block-table and a CSR cache, on `device`."""
    kp, vp, table, indptr, last = paged(k, v)
    lens = np.full(k.shape[0], k.shape[2], np.int32)
    return [
        kvevict.DenseCache(to(k, dtype, device), to(v, dtype, device), lens),
        kvevict.BlockTableCache(to(kp, dtype, device), to(vp, dtype, device), table, lens),
        kvevict.CSRPageCache(to(kp, dtype, device), to(vp, dtype, device), indptr, table.reshape(-1), last),
    ]


def device_signals(sig, dtype, device):
    out = {}
    for name, a in sig.items():
        out[name] = to(a, dtype, device) if name == "queries" else torch.from_numpy(a).to(device)
    return out


def assert_same_plan(gpu, cpu):
    """Equal counts, and the same kept positions except where two scores are float-rounding close:
    the device sums window attention in another order (on tensor cores for 16-bit keys), so a row
    may swap one position at its cut; a wrong pointer, stride or head would differ wholesale."""
    counts = gpu.counts.cpu()
    assert torch.equal(counts, cpu.counts), "kept counts differ"
    rows = counts.shape[0]
    differing = 0
    for r in range(rows):
        a = set(gpu.kept(r).cpu().tolist())
        b = set(cpu.kept(r).tolist())
        if a != b:
            differing += 1
            assert len(a ^ b) <= 2, f"row {r}: {sorted(a ^ b)}"
    assert differing <= max(1, rows // 10), f"{differing} of {rows} rows differ"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.kind)
def test_cuda_plans_equal_the_host_plans(policy, dtype):
    k, v, q = dense(N, BATCH)
    sig = signals_for(policy, q, N, BATCH)
    for host, gpu in zip(caches(k, v, dtype, "cpu"), caches(k, v, dtype, "cuda")):
        cpu_sig = device_signals(sig, dtype, "cpu")
        ref = kvevict.plan(policy, host, **cpu_sig)
        got = kvevict.plan(policy, gpu, **device_signals(sig, dtype, "cuda"))
        assert got.positions.is_cuda and got.positions.dtype == torch.int32
        assert_same_plan(got, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_compaction_is_the_host_compaction_byte_for_byte(dtype):
    k, v, q = dense(N, BATCH)
    policy = kvevict.SnapKV(budget=BUDGET, window=W)
    for host, gpu in zip(caches(k, v, dtype, "cpu"), caches(k, v, dtype, "cuda")):
        plan = kvevict.plan(policy, gpu, queries=to(q, dtype, "cuda"))
        k_ptr = gpu.k.data_ptr()
        res = kvevict.compact(gpu, plan)
        ref = kvevict.compact(host, kvevict.KeepPlan(plan.positions.cpu(), plan.counts.cpu()))
        assert gpu.k.data_ptr() == k_ptr  # in place, no copy crossed the boundary
        assert torch.equal(gpu.k.cpu(), host.k) and torch.equal(gpu.v.cpu(), host.v)
        assert torch.equal(res.new_lens.cpu(), ref.new_lens)
        assert sorted(res.freed_pages.cpu().tolist()) == sorted(ref.freed_pages.tolist())
        if host.layout != "dense":
            assert len(ref.freed_pages) == BATCH * (13 - 4)  # 13 pages of 16 hold 200 tokens, 4 hold 64


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.kind)
def test_cuda_evict_is_plan_then_compact(policy):
    k, v, q = dense(N, BATCH)
    sig = signals_for(policy, q, N, BATCH)
    for one, two in zip(caches(k, v, "bfloat16", "cuda"), caches(k, v, "bfloat16", "cuda")):
        dsig = device_signals(sig, "bfloat16", "cuda")
        plan, res = kvevict.evict(policy, one, **dsig)
        plan2 = kvevict.plan(policy, two, **dsig)
        res2 = kvevict.compact(two, plan2)
        assert torch.equal(plan.positions, plan2.positions) and torch.equal(plan.counts, plan2.counts)
        assert torch.equal(one.k, two.k) and torch.equal(one.v, two.v)
        assert torch.equal(res.new_lens, res2.new_lens)
        assert sorted(res.freed_pages.tolist()) == sorted(res2.freed_pages.tolist())


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_ada_snapkv_shares_the_budget_as_the_host(dtype):
    """Ada-KV's per-head budgets on the device (cuda/adaptive.cuh): every sequence keeps the host's
    total, and each head's count and positions equal the host's up to float-rounding near ties (the
    device sums window attention in another order; the C++ CUDA test checks exact equality on equal
    scores, ties across heads included)."""
    k, v, q = dense(N, BATCH)
    policy = kvevict.AdaSnapKV(budget=BUDGET, window=W)
    for host, gpu in zip(caches(k, v, dtype, "cpu"), caches(k, v, dtype, "cuda")):
        ref = kvevict.plan(policy, host, queries=to(q, dtype, "cpu"))
        got = kvevict.plan(policy, gpu, queries=to(q, dtype, "cuda"))
        counts, want = got.counts.cpu().view(BATCH, -1), ref.counts.view(BATCH, -1)
        assert torch.equal(counts.sum(1), want.sum(1)), "a sequence's total differs"
        assert (counts - want).abs().max().item() <= 2
        for r in range(counts.numel()):
            a, b = set(got.kept(r).cpu().tolist()), set(ref.kept(r).tolist())
            assert len(a ^ b) <= 4, f"row {r}: {sorted(a ^ b)}"


def test_cuda_runs_on_the_current_stream_and_is_deterministic():
    k, v, q = dense(700, BATCH)
    policy = kvevict.SABlock(budget=100, window=W, delimiter_ids=[1, 2])
    sig = device_signals(signals_for(policy, q, 700, BATCH), "bfloat16", "cuda")
    cache = caches(k, v, "bfloat16", "cuda")[1]
    first = kvevict.plan(policy, cache, **sig)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        again = kvevict.plan(policy, cache, **sig)
    torch.cuda.synchronize()
    assert torch.equal(first.positions, again.positions) and torch.equal(first.counts, again.counts)


def test_cuda_errors_name_the_argument_and_write_nothing():
    k, v, q = dense(100)
    dense_c, table_c, csr_c = caches(k, v, "bfloat16", "cuda")
    qd = to(q, "bfloat16", "cuda")
    snap = kvevict.SnapKV(budget=40, window=W)
    # checked on the host before anything is enqueued
    expect_error(lambda: kvevict.evict(kvevict.SnapKV(budget=5, window=W), dense_c, queries=qd),
                 "selector.budget.entries", dense_c)
    e = expect_error(lambda: kvevict.evict(snap, dense_c, queries=qd.cpu()), "queries", dense_c)
    assert "K's device" in str(e)
    expect_error(lambda: kvevict.evict(snap, dense_c, queries=qd.half()), "queries", dense_c)
    short = kvevict.CSRPageCache(csr_c.k, csr_c.v, csr_c.indptr, csr_c.indices[:3], csr_c.last_page_len)
    expect_error(lambda: kvevict.evict(snap, short, queries=qd), "indices", csr_c)
    # checked on the device before anything is written
    over = kvevict.DenseCache(dense_c.k, dense_c.v, [101])
    expect_error(lambda: kvevict.evict(snap, over, queries=qd), "cache.seq_lens", dense_c)
    bad_table = table_c.block_table.clone()
    bad_table[0, 2] = table_c.k.shape[0]  # a page id past the pool
    bad = kvevict.BlockTableCache(table_c.k, table_c.v, bad_table, table_c.seq_lens)
    expect_error(lambda: kvevict.evict(snap, bad, queries=qd), "cache.block_table", table_c)
    expect_error(lambda: kvevict.evict(snap, table_c, queries=qd, seq_windows=[W + 1]), "signals.seq_windows",
                 table_c)
    plan = kvevict.plan(snap, dense_c, queries=qd)
    backwards = kvevict.KeepPlan(plan.positions.flip(1).contiguous(), plan.counts)
    expect_error(lambda: kvevict.compact(dense_c, backwards), "plan.positions", dense_c)
    expect_error(lambda: kvevict.compact(dense_c, kvevict.KeepPlan(plan.positions[:1], plan.counts[:1])),
                 "plan.rows", dense_c)
