"""`build_dataset`: turn a `DataSpec` into a checked `FederatedDataset`."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from bouquet.data.federated import ClientData, DataError, FederatedDataset
from bouquet.data.holdout import validation_as_test
from bouquet.data.partition import dirichlet_partition, dirichlet_proportions, iid_partition, make_rng
from bouquet.data.shakespeare import build_shakespeare_lm
from bouquet.data.sources import ImageSource, load_source
from bouquet.data.spec import LM_DATASETS, SYNTHETIC, TEXT_DATASETS, DataSpec
from bouquet.data.synthetic import build_synthetic
from bouquet.data.text import build_text_tasks
from bouquet.data.transforms import channel_stats, rotate_images, standardize


def build_dataset(spec: DataSpec) -> FederatedDataset:
    """Build the federation described by `spec`; the result has passed `FederatedDataset.check()`."""
    if spec.name in SYNTHETIC:
        ds = build_synthetic(spec.name, spec.num_clients, spec.num_clusters, spec.seed, spec.test_fraction,
                             spec.train_per_client, spec.test_per_client, spec.fraction, spec.min_train)
    elif spec.name in LM_DATASETS:
        ds = build_shakespeare_lm(spec)
    elif spec.name in TEXT_DATASETS:
        ds = build_text_tasks(spec.num_clients, spec.num_clusters, spec.seed, spec.train_per_client,
                              spec.test_per_client, spec.test_fraction, shared_labels=spec.shift == "label_shift",
                              tokenizer=spec.tokenizer, max_tokens=spec.max_tokens)
    else:
        ds = build_image_dataset(spec, load_source(spec.name, spec.resolved_path()))
    ds.meta["spec"] = dataclasses.asdict(spec)
    _check_test_rows(spec, ds)
    if spec.validation > 0:
        ds = validation_as_test(ds, spec.validation, spec.seed)
    ds.check()
    return ds


def _check_test_rows(spec: DataSpec, ds: FederatedDataset) -> None:
    """Every client needs a test row: name the option that left some without one (DataError)."""
    sizes = ds.test_sizes()
    empty = torch.nonzero(sizes == 0).flatten().tolist()
    if not empty:
        return
    shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
    who = f"client {empty[0]}" if len(empty) == 1 else f"{len(empty)} of {ds.num_clients} clients ({shown})"
    if ds.meta.get("official_test_split"):
        raise DataError(f"data.num_clients: {who} get no row of the {spec.name} test split ({spec.partition} "
                        f"partition of {int(sizes.sum())} test rows); expected every client to get at least one "
                        f"(fewer clients, a larger data.alpha, or data.partition = 'iid')")
    n = min(int(ds.clients[k].num_train) for k in empty)
    if n < 2:
        raise DataError(f"data.num_clients: {who} get a single row, which cannot be both a training and a test "
                        f"row; expected fewer clients than {ds.num_clients} for {spec.name}")
    raise DataError(f"data.test_fraction: {spec.test_fraction} leaves {who} without a test row (a client of "
                    f"{n} rows gets floor({n} x {spec.test_fraction}) = 0); expected at least {1 / max(n, 1):.3g} "
                    f"for this data, or data.test_per_client >= 1")


def cluster_groups(spec: DataSpec, num_classes: int) -> list[tuple[list[int], np.ndarray | None]]:
    """(clients, allowed classes) groups partitioned separately: one per cluster for cifar100_groups."""
    clients = list(range(spec.num_clients))
    if spec.shift != "cifar100_groups":
        return [(clients, None)]
    c = spec.num_clusters
    return [([k for k in clients if k % c == g], np.arange(g, num_classes, c)) for g in range(c)]


def _split(labels: np.ndarray, n_clients: int, rng: np.random.Generator, spec: DataSpec, min_size: int,
           props: np.ndarray | None) -> list[np.ndarray]:
    if spec.partition == "iid":
        return iid_partition(labels, n_clients, rng)
    return dirichlet_partition(labels, n_clients, rng, spec.alpha, min_size, props)


def client_shares(spec: DataSpec, src: ImageSource, rng: np.random.Generator
                  ) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Each client's rows of the train pool and of the test pool (None for sources without a test split)."""
    y_train = src.y_train.numpy()
    y_test = None if src.y_test is None else src.y_test.numpy()
    # without a test pool the share is cut into train/test later: leave room for min_train training rows
    min_size = spec.min_train if src.has_test else math.ceil(spec.min_train / (1 - spec.test_fraction))
    train: list[np.ndarray] = [np.empty(0, np.int64)] * spec.num_clients
    test: list[np.ndarray | None] = [None] * spec.num_clients
    for clients, classes in cluster_groups(spec, src.num_classes):
        rows = np.arange(len(y_train)) if classes is None else np.flatnonzero(np.isin(y_train, classes))
        if len(rows) < len(clients):
            raise DataError(f"data.num_clients: {len(clients)} clients for only {len(rows)} rows of "
                            f"{spec.name}; expected at most one client per row")
        props = None
        if spec.partition == "dirichlet":
            props = dirichlet_proportions(len(clients), src.num_classes, spec.alpha, rng)
        for k, part in zip(clients, _split(y_train[rows], len(clients), rng, spec, min_size, props),
                           strict=True):
            train[k] = rows[part]
        if y_test is not None:
            rows = np.arange(len(y_test)) if classes is None else np.flatnonzero(np.isin(y_test, classes))
            for k, part in zip(clients, _split(y_test[rows], len(clients), rng, spec, 0, props), strict=True):
                test[k] = rows[part] + src.num_train_pool
    return train, test


def _take(rows: np.ndarray, n: int, rng: np.random.Generator, spec: DataSpec, field: str,
          k: int) -> np.ndarray:
    """Exactly n of `rows`: a random subset, or all of them plus draws with replacement when resample=True."""
    if len(rows) >= n:
        return np.sort(rng.choice(rows, n, replace=False)) if n < len(rows) else rows
    if not spec.resample or not len(rows):
        raise DataError(f"data.{field}: client {k} has only {len(rows)} rows, expected at least {n} "
                        f"(lower data.{field}, use fewer clients, or set data.resample=True)")
    return np.concatenate([rows, np.sort(rng.choice(rows, n - len(rows), replace=True))])


def client_rows(spec: DataSpec, k: int, share: np.ndarray,
                test_share: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Final train and test pool ids of client k: split (if no test pool), fraction, exact sizes.

    Own random streams per client and step, so e.g. the `fraction` subset is nested in the full split.
    """
    if test_share is None:  # no official test split: cut the client's own share
        share = make_rng(spec.seed, 1, k).permutation(share)
        tpc = spec.train_per_client
        if tpc is not None and (len(share) > tpc or not spec.resample):
            n_train = tpc
        else:
            n_train = len(share) - math.floor(len(share) * spec.test_fraction + 1e-9)
        train, test = np.sort(share[:n_train]), np.sort(share[n_train:])
    else:
        train, test = share, test_share
    rng = make_rng(spec.seed, 2, k)
    if spec.fraction < 1.0:
        keep = min(len(train), max(spec.min_train, math.floor(spec.fraction * len(train) + 0.5)))
        train = _take(train, keep, rng, spec, "fraction", k)
    if spec.train_per_client is not None:
        train = _take(train, spec.train_per_client, rng, spec, "train_per_client", k)
    if spec.test_per_client is not None:
        test = _take(test, spec.test_per_client, rng, spec, "test_per_client", k)
    return train.astype(np.int64), test.astype(np.int64)


def build_image_dataset(spec: DataSpec, src: ImageSource) -> FederatedDataset:
    """Partition an image source among clients and apply the cluster shift (not yet checked)."""
    if spec.num_clusters > src.num_classes and spec.shift in ("label_shift", "cifar100_groups"):
        raise DataError(f"data.num_clusters: expected at most {src.num_classes} (the classes of {spec.name}) "
                        f"with shift={spec.shift}, got {spec.num_clusters}")
    rng = make_rng(spec.seed)
    shares, test_shares = client_shares(spec, src, rng)
    rows = [client_rows(spec, k, shares[k], test_shares[k]) for k in range(spec.num_clients)]
    mean = std = None
    if spec.normalize:
        used = torch.from_numpy(np.unique(np.concatenate([r[0] for r in rows])))
        mean, std = channel_stats(src.gather_raw(used)[0])
        mean, std = mean / src.scale, std / src.scale
    clients = []
    angles = [360.0 / spec.num_clusters * c for c in range(spec.num_clusters)]
    for k, (train, test) in enumerate(rows):
        c = k % spec.num_clusters
        tensors = []
        for ids in (train, test):
            ids_t = torch.from_numpy(ids)
            x, y = src.gather(ids_t)
            if spec.shift == "rotate":
                x = rotate_images(x, angles[c])
            elif spec.shift == "label_shift":
                y = (y + c) % src.num_classes
            if mean is not None:
                x = standardize(x, mean, std)
            tensors += [x, y, ids_t]
        x_tr, y_tr, id_tr, x_te, y_te, id_te = tensors
        clients.append(ClientData(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, cluster=c,
                                  train_ids=id_tr, test_ids=id_te))
    meta = {
        "source": spec.name, "num_classes": src.num_classes, "official_test_split": src.has_test,
        "pool_sizes": (src.num_train_pool, src.num_pool - src.num_train_pool),
        "id_space": "rows of the train pool, then rows of the test pool" if src.has_test
        else "rows of the source (no official test split; each client's share is cut into train/test)",
        "rotation_degrees": angles if spec.shift == "rotate" else None,
        "normalization": None if mean is None else {"mean": mean.tolist(), "std": std.tolist()},
    }
    return FederatedDataset(name=spec.name, clients=tuple(clients), input_shape=src.image_shape,
                            num_outputs=src.num_classes, objective="classification",
                            num_clusters=spec.num_clusters, meta=meta)
