"""The shuffle buffer (:func:`mlaas4hep.io.shuffle.batches`) on synthetic tables: every row once, seeded, bounded."""

import weakref

import numpy as np
import pytest

from mlaas4hep.io.shuffle import batches


def tables(sizes, width=3):
    """Tables like decoded chunks: ``x`` holds the row's number in the stream, ``y`` the table's class."""
    out, start = [], 0
    for k, n in enumerate(sizes):
        ids = np.arange(start, start + n)
        start += n
        x = np.repeat(ids[:, None], width, axis=1).astype(np.float32)
        out.append((x, ids % 3 == 0, np.full(n, k % 2, np.int64), ids.copy()))
    return out


SIZES = [[3_000] * 20, [7, 0, 1, 2_500, 999, 1, 4_096], [5], []]


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("batch_size", [1, 100, 1024])
@pytest.mark.parametrize("buffer", [0, 2_048, 3_000, 16_000, float("inf")])
def test_every_row_once_full_batches_and_rows_kept_whole(sizes, batch_size, buffer):
    out = list(batches(tables(sizes), batch_size, buffer, np.random.default_rng(3)))
    ids = np.concatenate([b[3] for b in out]) if out else np.zeros(0, np.int64)
    np.testing.assert_array_equal(np.sort(ids), np.arange(sum(sizes)))
    assert all(len(b[3]) == batch_size for b in out[:-1])
    # the arrays of a row travel together: in each batch, row k of every array is the same row
    # (checked on all batches at once: one comparison, not one per batch of a single row)
    assert all(len(x) == len(mask) == len(y) == len(i) for x, mask, y, i in out)
    if out:
        x, mask, i = (np.concatenate([b[k] for b in out]) for k in (0, 1, 3))
        np.testing.assert_array_equal(x, np.repeat(i[:, None], 3, axis=1).astype(np.float32))
        np.testing.assert_array_equal(mask, i % 3 == 0)


def test_the_order_is_reproducible_for_a_seed_and_new_for_another():
    def order(seed):
        return np.concatenate(
            [b[3] for b in batches(tables([3_000] * 20), 1024, 16_000, np.random.default_rng(seed))]
        )

    np.testing.assert_array_equal(order(1), order(1))
    assert not np.array_equal(order(1), order(2))
    assert not np.array_equal(order(1), np.sort(order(1)))


@pytest.mark.parametrize("sizes", SIZES)
def test_gathering_per_batch_or_per_pool_gives_the_same_batches(sizes):
    def run(**kw):
        return list(batches(tables(sizes), 1024, 4_096, np.random.default_rng(7), **kw))

    per_batch, per_pool = run(materialize=False), run(materialize=True)
    assert len(per_batch) == len(per_pool)
    for a, b in zip(per_batch, per_pool):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def test_tensors_get_the_same_batches_as_numpy():
    torch = pytest.importorskip("torch")
    ts = tables([3_000] * 7)
    ref = list(batches(ts, 512, 4_096, np.random.default_rng(5)))
    got = list(
        batches(
            [tuple(torch.from_numpy(a) for a in t) for t in ts],
            512,
            4_096,
            np.random.default_rng(5),
            cat=torch.cat,
            take=lambda a, p: a[torch.from_numpy(p)],
        )
    )
    assert len(got) == len(ref)
    for a, b in zip(ref, got):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v.numpy())


def test_batches_mix_the_tables_of_a_pool_and_the_last_ones_too():
    # 40 tables of 2,000 rows, classes alternating: every batch (256 blocks of 4 rows)
    # holds close to half of each, the last batches of the epoch included
    fractions = np.array(
        [
            b[2].mean()
            for b in batches(tables([2_000] * 40), 1024, 16_000, np.random.default_rng(0))
            if len(b[2]) == 1024
        ]
    )
    assert abs(fractions.mean() - 0.5) < 0.01 and fractions.std() < 0.045
    assert fractions.min() > 0.35 and fractions.max() < 0.65
    assert 0.4 < fractions[-5:].mean() < 0.6


@pytest.mark.parametrize("materialize", [False, True])
def test_memory_holds_the_tables_of_two_pools_at_most(materialize):
    alive = []

    def stream():
        for _ in range(100):
            t = tables([1_000])[0]  # made one at a time: only the shuffle holds them
            alive.append(weakref.ref(t[0]))
            yield t

    out = batches(stream(), 256, 8_000, np.random.default_rng(0), materialize=materialize)
    held = [sum(r() is not None for r in alive) for _ in out]
    # a pool: 8,000 new rows, and the 4,000 held back from the previous pool, in that pool's
    # tables (gathered per batch) or in a copy (per pool: the tables go before the batches,
    # but for the last one made, which the stream's frame holds)
    assert max(held) == (20 if not materialize else 1)


def test_without_rng_batches_keep_the_order_and_are_views_but_where_tables_meet():
    ts = tables([1_000, 24, 3_000, 10])
    out = list(batches(ts, 256))
    np.testing.assert_array_equal(np.concatenate([b[3] for b in out]), np.arange(4_034))
    assert [len(b[3]) for b in out] == [256] * 15 + [194]
    assert np.shares_memory(out[0][0], ts[0][0])  # inside a table: a view, no copy
    assert not np.shares_memory(out[3][0], ts[0][0])  # rows 768-1,023 straddle tables 0, 1 and 2
