"""The in-process engine: the round driver with every sampled client trained in this process.

State is explicit (``RunState``) so that a run can be checkpointed and resumed; ``run_round`` and
``evaluate`` are the two operations (``run`` chains them for all rounds). Local training runs the
sampled clients as one vectorized computation (vmap + autograd, or the hand-batched MLP kernels or the
batched conv kernels when the algorithm declares a loss they implement and their first steps agree with
autograd), or one by one (``vectorized=False``: the reference); all give the same numbers. Conv chains on
the kernels evaluate through the kernels' forward once it matched the model on a few clients; other conv
models evaluate client by client on CPU under ``vectorized = "auto"`` (vmap's grouped convs are slower).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor
from torch.func import vmap

from ..algorithms import Algorithm
from ..data.federated import FederatedDataset
from .autograd_training import in_client_chunks, train_sequential, train_vectorized
from .batching import TRAIN, SplitArrays, round_batches
from .conv_kernels import ConvOptions, conv_forward, conv_trainer
from .evaluation import ClientScores, candidate_losses, personalized_params, score_forward, score_params, summarize
from .finetune import finetune_batches, finetuned
from .kernel_check import CheckedTrainer, KernelMismatchWarning
from .mlp_kernels import kernel_trainer
from .robust import RobustConfig
from .rounds import ClientResults, RoundDriver, RunState, select_clients
from .spec import RunSpec, resolve_device, resolve_vectorized
from .summary import metric_name


class Simulator:
    """Runs one algorithm on one federated dataset; holds data arrays, not mutable run state."""

    def __init__(self, alg: Algorithm, data: FederatedDataset, spec: RunSpec, *, seed: int = 0,
                 robust: RobustConfig | None = None):
        data.check()  # a hand-built dataset (labels outside num_outputs, no test rows, ...): one DataError
        self.alg, self.data, self.seed = alg, data, seed
        self.device = torch.device(resolve_device(spec.device))
        self.vectorized = resolve_vectorized(spec.vectorized, alg.model, self.device.type)
        self.spec = spec
        self.driver = RoundDriver(alg, data.train_sizes(), clients_per_round=spec.clients_per_round, seed=seed,
                                  robust=robust)
        self.kernel_kind = "hand-batched kernels"
        self.eval_forward: Callable | None = None
        self.eval_trusted: bool | None = None
        self.train = SplitArrays.from_dataset(data, "train").to(self.device)
        self.test = SplitArrays.from_dataset(data, "test").to(self.device)
        self.clusters = data.clusters
        self.num_examples = data.train_sizes()
        self.trainer: Callable = in_client_chunks(partial(train_vectorized, alg.loss, alg.local_update),
                                                  spec.train_chunk)
        kernels = kernel_trainer(alg.model, alg.objective, alg.local_update, alg.loss_spec, fallback=self.trainer) \
            if self.vectorized and spec.hand_batched else None
        if kernels is None and spec.hand_batched and spec.vectorized is not False:
            # conv chains: batched conv kernels, on CPU too (where "auto" otherwise loops over clients)
            kernels = conv_trainer(alg.model, alg.objective, alg.local_update, alg.loss_spec,
                                   ConvOptions(chunk=0) if self.device.type == "cuda" else ConvOptions())
            self.kernel_kind = "batched conv kernels"
            #: evaluation by the kernels' forward, once it matched the client loop (``_batched_eval``)
            self.eval_forward = conv_forward(alg.model, alg.objective, alg.loss_spec) if kernels else None
        self.checked = CheckedTrainer(kernels, self.trainer, alg.name) if kernels is not None else None
        self.trainer = self.checked or self.trainer
        #: local training runs all sampled clients at once (vmap, or the kernels), not one by one
        self.batched_training = self.vectorized or self.checked is not None

    @property
    def training_path(self) -> str:
        """Which local trainer runs (recorded in each run's summary)."""
        if not self.batched_training:
            return "sequential"
        if self.checked is None:
            return "vmap + autograd"
        return self.kernel_kind if self.checked.trusted is not False else self.checked.path

    # -- state and one round ------------------------------------------------------------------
    def init_state(self) -> RunState:
        state = self.driver.init_state(self.clusters)
        return RunState(0, _to(state.server, self.device), _to(state.clients, self.device), state.sampler)

    def run_round(self, state: RunState) -> tuple[RunState, dict]:
        """Sample, train the sampled clients here, and let the driver screen, aggregate and record."""
        alg, spec = self.alg, self.spec
        ids, sampler = self.driver.sample(state)
        payload = alg.broadcast(state.server)
        index, weight = round_batches(self.train, ids, seed=self.seed, round_idx=state.round + 1,
                                      batch_size=spec.batch_size, epochs=spec.local_epochs, steps=spec.local_steps,
                                      purpose=TRAIN, shuffle=spec.shuffle)
        # Gathered step-major ([S, K, B, ...] in memory), seen as [K, S, B, ...]: the vectorized trainer walks
        # steps, so each step's block is contiguous without a copy.
        step_major = self.train.gather(index.transpose(0, 1).contiguous(), weight.transpose(0, 1).contiguous())
        batches = {k: v.transpose(0, 1) for k, v in step_major.items()}
        private = select_clients(state.clients, ids)
        n = self.num_examples[ids].to(self.device)
        with alg.mode(True):
            trainable = self._client_init(state, payload, private, batches)
            if self.batched_training:
                trained, losses = self.trainer(trainable, payload, private, batches)
            else:
                trained, losses = train_sequential(alg.loss, alg.local_update, trainable, payload, private, batches)
            if self.vectorized:
                uploads, new_private = vmap(alg.client_final, in_dims=(0, None, 0, 0, 0))(
                    trained, payload, private, n, batches)
            else:
                outs = [alg.client_final(_row(trained, k), payload, _row(private, k), n[k], _row(batches, k))
                        for k in range(len(ids))]
                uploads, new_private = _stack([o[0] for o in outs]), _stack([o[1] for o in outs])
        results = ClientResults(ids, uploads, losses, new_private)
        return self.driver.finish(state, ids, sampler, payload, results)

    def _client_init(self, state: RunState, payload: dict, private: dict, batches: dict) -> dict:
        """The sampled clients' trainable parameters. client_init may run the model (IFCA picks its cluster
        by loss): vmapped where vmap is the faster path, one client at a time where it is not (convs on CPU),
        and a pick by loss from all clients' candidate losses by the conv kernels' forward once it is trusted."""
        alg = self.alg
        if alg.choose_by_loss is not None and self._batched_eval(state):
            losses = candidate_losses(self.eval_forward, alg.choose_by_loss.candidates(payload), batches,
                                      alg.objective)
            return vmap(alg.choose_by_loss.pick, in_dims=(None, 0, 0, 0))(payload, private, losses, batches)
        if self.vectorized:
            return vmap(alg.client_init, in_dims=(None, 0, 0), randomness="different")(payload, private, batches)
        return _stack([alg.client_init(payload, _row(private, k), _row(batches, k))
                       for k in range(batches["w"].shape[0])])

    def run(self, state: RunState | None = None, on_round: Callable[[dict], None] | None = None
            ) -> tuple[RunState, list[dict]]:
        """Every remaining round of ``spec.rounds``, evaluating at evaluation rounds (``eval`` in the record)."""
        state = state or self.init_state()
        records = []
        while state.round < self.spec.rounds:
            state, rec = self.run_round(state)
            if self.spec.is_eval_round(state.round):
                rec["eval"] = {"metric": self.metric, **self.evaluate(state)}
            records.append(rec)
            if on_round is not None:
                on_round(rec)
        return state, records

    @property
    def metric(self) -> str:
        """The evaluation metric's name: accuracy (classification) or mse (regression)."""
        return metric_name(self.alg.objective)

    # -- evaluation ----------------------------------------------------------------------------
    def client_scores(self, state: RunState) -> ClientScores:
        """Every client's personalized model (fine-tuned first when the algorithm asks) on its test split."""
        alg, spec = self.alg, self.spec
        clients = torch.arange(self.data.num_clients)
        if alg.finetune is not None:
            params, fn = self.finetune(state), (lambda cs: cs)
        else:
            params, fn = state.clients, (lambda cs: alg.personalize(state.server, cs))
        with torch.no_grad(), alg.mode(False):
            if alg.finetune is None and self._batched_eval(state):
                return score_forward(alg, self.eval_forward, state.server, state.clients, self.test, clients)
            return score_params(alg, fn, params, self.test, clients, vectorized=self.vectorized,
                                chunk=spec.eval_chunk)

    def _batched_eval(self, state: RunState, clients: int = 4) -> bool:
        """Whether the conv kernels' forward evaluates: checked once against the client loop on a few clients."""
        if self.eval_forward is None or (self.checked is not None and self.checked.trusted is False):
            return False
        if self.eval_trusted is None:
            alg, few = self.alg, torch.arange(min(clients, self.data.num_clients))
            mine = select_clients(state.clients, few)
            loop = score_params(alg, lambda cs: alg.personalize(state.server, cs), mine, self.test, few,
                                vectorized=False)
            batched = score_forward(alg, self.eval_forward, state.server, mine, self.test, few)
            self.eval_trusted = bool(torch.allclose(batched.loss, loop.loss, rtol=1e-4, atol=1e-6))
            if not self.eval_trusted:
                warnings.warn(f"algorithm {alg.name!r}: the conv kernels' forward disagrees with the model on "
                              f"test rows (losses {batched.loss.tolist()} against {loop.loss.tolist()}); "
                              f"evaluating client by client instead.", KernelMismatchWarning, stacklevel=2)
        return self.eval_trusted

    def finetune(self, state: RunState) -> dict[str, Tensor]:
        """Personalized params of every client after local fine-tuning (evaluation only; state unchanged)."""
        alg, spec = self.alg, self.spec
        parts = []
        for start in range(0, self.data.num_clients, spec.eval_chunk):
            ids = torch.arange(start, min(self.data.num_clients, start + spec.eval_chunk))
            params = personalized_params(alg, state.server, select_clients(state.clients, ids), len(ids))
            batches = finetune_batches(self.train, ids, seed=self.seed, round_idx=state.round,
                                       batch_size=spec.batch_size, epochs=alg.finetune.epochs, shuffle=spec.shuffle)
            parts.append(finetuned(alg, params, batches, vectorized=self.vectorized))
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def evaluate(self, state: RunState) -> dict:
        """Mean, spread, per-cluster and per-client scores of every client's personalized model, and for
        routed algorithms the router ARI against the true clusters (a report figure follows it by round)."""
        ev = summarize(self.client_scores(state), self.clusters)
        if self.alg.report is not None:
            extra = self.alg.report(state.server, state.clients, self.clusters)
            for key in ("router_ari", "router_entropy", "router_drift", "component_share", "revival_splits"):
                if key in extra:
                    ev[key] = extra[key]
        return ev


def _row(d: dict, k: int) -> dict:
    return {n: v[k] for n, v in d.items()}


def _stack(rows: list[dict]) -> dict:
    if not rows or not rows[0]:
        return {}
    return {n: torch.stack([r[n] for r in rows]) for n in rows[0]}


def _to(tree, device: torch.device):
    if isinstance(tree, dict):
        return {k: _to(v, device) for k, v in tree.items()}
    if isinstance(tree, Tensor):
        return tree.to(device)
    return tree
