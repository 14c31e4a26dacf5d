"""PooledClients: clients as row indices into one shared pool (gathered per client, checked once per pool row)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from bouquet.data import DataError, FederatedDataset, PooledClients


def _pooled(num_clients: int, train: int = 6, test: int = 2, pool: int = 40, seed: int = 0) -> FederatedDataset:
    """Clients resampling a [pool, 3, 2] pool: training rows from its first 3/4, test rows from the rest."""
    gen = torch.Generator().manual_seed(seed)
    x_pool = torch.randn(pool, 3, 2, generator=gen)
    cut = pool * 3 // 4
    rows_tr = torch.randint(0, cut, (num_clients, train), generator=gen)
    rows_te = torch.randint(cut, pool, (num_clients, test), generator=gen)
    cluster = torch.arange(num_clients) % 2
    y_pool = torch.randint(0, 4, (pool,), generator=gen)
    y_tr, y_te = (y_pool[rows_tr] + cluster[:, None]) % 4, (y_pool[rows_te] + cluster[:, None]) % 4
    clients = PooledClients.build(x_pool, cluster, rows_tr, y_tr, rows_te, y_te)
    return FederatedDataset("pooled", clients, (3, 2), 4, "classification", 2)


def test_a_pooled_client_reads_its_pool_rows():
    data = _pooled(5)
    p = data.pooled
    assert p is not None and data.num_clients == len(p) == 5
    c = data.clients[3]
    rows = p.train.rows[18:24]
    assert torch.equal(c.x_train, p.x_pool[rows]) and torch.equal(c.train_ids, rows)
    assert torch.equal(c.y_train, p.train.y[18:24]) and c.cluster == 1 and c.num_test == 2
    assert torch.equal(data.clients[-1].x_test, data.clients[4].x_test)
    assert [k.cluster for k in data.clients] == [0, 1, 0, 1, 0]  # iteration ends at the last client
    assert torch.equal(data.train_sizes(), torch.full((5,), 6)) and torch.equal(data.clusters, p.cluster)
    with pytest.raises(IndexError):
        data.clients[5]
    data.check()


def test_ragged_clients_from_per_client_lists():
    x_pool = torch.arange(10.0).reshape(10, 1)
    rows_tr, rows_te = [torch.tensor([0, 1, 1]), torch.tensor([2])], [torch.tensor([8]), torch.tensor([9, 9])]
    ys_tr, ys_te = [torch.tensor([0, 1, 1]), torch.tensor([0])], [torch.tensor([1]), torch.tensor([0, 0])]
    p = PooledClients.build(x_pool, torch.tensor([0, 1]), rows_tr, ys_tr, rows_te, ys_te)
    data = FederatedDataset("ragged", p, (1,), 2, "classification", 2)
    data.check()
    assert data.train_sizes().tolist() == [3, 1] and data.test_sizes().tolist() == [1, 2]
    assert data.clients[1].x_train.flatten().tolist() == [2.0] and data.clients[1].x_test.flatten().tolist() == [9, 9]
    with pytest.raises(DataError, match="differ in clients or in rows per client"):
        PooledClients.build(x_pool, torch.tensor([0, 1]), rows_tr, ys_tr[:1], rows_te, ys_te)


def test_check_names_the_client_of_a_bad_row():
    data = _pooled(6)
    p = data.pooled
    bad_row = int(p.train.rows[4 * 6])  # client 4's first training row
    owners = {k for k in range(6) if bad_row in p.train.rows[6 * k:6 * k + 6].tolist()}
    x = p.x_pool.clone()
    x[bad_row, 0, 0] = float("nan")
    with pytest.raises(DataError, match=rf"client {min(owners)}: x_train has NaN or Inf features"):
        replace(data, clients=replace(p, x_pool=x)).check()
    unused = sorted(set(range(30)) - set(p.train.rows.tolist()))
    if unused:  # a pool row no client reads may hold anything
        x = p.x_pool.clone()
        x[unused[0]] = float("inf")
        replace(data, clients=replace(p, x_pool=x)).check()
    y = p.test.y.clone()
    y[5] = 4
    with pytest.raises(DataError, match=r"client 2: y_test has labels outside \[0, 4\)"):
        replace(data, clients=replace(p, test=replace(p.test, y=y))).check()
    rows = p.test.rows.clone()
    rows[3] = int(p.train.rows[0])  # a test row that is client 0's training row
    with pytest.raises(DataError, match="train and test ids overlap across clients|share rows"):
        replace(data, clients=replace(p, test=replace(p.test, rows=rows))).check()
    rows[3] = 40
    with pytest.raises(DataError, match="client 1: test row index 40 outside the pool of 40 rows"):
        replace(data, clients=replace(p, test=replace(p.test, rows=rows))).check()
    with pytest.raises(DataError, match=r"x_pool has shape \(40, 3, 2\), expected \[P, 6\]"):
        replace(data, input_shape=(6,)).check()


def test_pooled_storage_does_not_hold_client_copies():
    """Features are stored once whatever the number of clients; per client only its indices and labels."""
    small, large = _pooled(10).pooled, _pooled(20_000).pooled
    pool_bytes = small.x_pool.numel() * small.x_pool.element_size()
    assert large.x_pool.shape == small.x_pool.shape
    per_row = 2 * 8  # int64 pool row + int64 label
    assert large.nbytes() <= pool_bytes + 20_000 * (8 * per_row + 3 * 8) + 40 * 8
    FederatedDataset("large", large, (3, 2), 4, "classification", 2).check()
