"""Potara: per client, a federated LoRA (short FedIT phase) and a local LoRA merged in delta-W space.

Round schedule (``R_f`` = ``federated_rounds``; rounds are counted by the server)::

    rounds 1..R_f     payload = theta_F (A, B): FedIT; with local_init="W0" the local LoRA trains too
    round R_f + 1     payload = "final.*": the last federated model, downloaded once, nothing uploaded
    later rounds      no communication: the local LoRA trains alone

Every client keeps its local LoRA (private), a copy of the last federated model it received and the
trace estimates of both, refreshed in ``client_final`` on a few of the round's batches (the engine
passes them to every ``client_final``). ``personalize`` merges exactly in delta-W space,
W0 + lambda dW_F + (1 - lambda) dW_L (``merge_space = "delta"``; ``"factor"``: A and B mixed separately,
the paper's implementation), with lambda = tr_L / (bias + tr_F + tr_L) per client or layer, or the
paper's (b - c) / (a + b - 2c) (``estimator = "paper"``). ``estimator = "data"`` (ours) trains K extra
fold LoRAs per client for tr_L. Which parts are reconstructions is said in docs/potara.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..checks import require
from ..merging.closed_form import (
    bias_from_distance,
    merge_delta_w,
    mixing_weight,
    param_layers,
    squared_distance,
)
from ..merging.data_weight import delta_distance, delta_spread, fold_mask, fold_trace
from ..merging.estimators import (
    ESTIMATORS,
    client_spread,
    diagonal_fisher,
    fisher_from_grads,
    iterate_trace,
    laplace_trace,
    per_example_grads,
    sgd_trace,
    update_moments,
)
from ..merging.paper import gradient_correlation, merge_factors, paper_weight
from .contract import (
    Algorithm,
    Merging,
    Objective,
    Params,
    add_prefix,
    prefixed,
    stack_for_clients,
    task_loss,
    weighted_mean,
)
from .lora import LoraOptions, common, lora_algorithm
from .registry import BuildContext, register
from .server_opt import ServerOptimizer, server_sgd

FED, LOCAL, FINAL, COPY = "fed.", "local.", "final.", "fedcopy."
M1, M2 = "m1.", "m2."
TRACE_F, TRACE_L, DIST2, COUNT = "trace.fed", "trace.local", "trace.dist2", "trace.count"
TRACE_C, NOISE = "trace.cross", "trace.eta_over_2b"
LOCAL_INITS = ("W0", "federated")
GRANULARITIES = ("client", "layer")
MERGE_SPACES = ("delta", "factor")


def fold_prefix(k: int) -> str:
    """State/trainable prefix of fold LoRA k (estimator "data")."""
    return f"fold{k}."


def potara(template: nn.Module, init: Params, objective: Objective, *, lr: float, federated_rounds: int,
           total_examples: int, estimator: str = "data", granularity: str = "client",
           bias_term: bool = True, local_init: str = "W0", damping: float = 1e-4, fisher_steps: int = 2,
           weighted: bool = True, window: int = 5, folds: int = 4, merge_space: str = "delta",
           alpha: float = 1.0, weight_decay: float = 0.0, server_opt: ServerOptimizer | None = None) -> Algorithm:
    """Potara over a LoRA template (see ``lora.lora_model``) with the reconstruction's switches.

    ``init`` may hold a head trained whole (``train_head``) beside the adaptors: it is part of the federated,
    local and fold models alike, merged linearly (exact: lam head_F + (1 - lam) head_L) and, with
    ``estimator = "data"``, one more layer of the delta-W terms (``alpha``: the LoRA scale, so that both
    are in the same units).
    """
    if estimator not in ESTIMATORS or merge_space not in MERGE_SPACES:
        raise ValueError(f"estimator/merge_space: expected one of {ESTIMATORS}/{MERGE_SPACES}, "
                         f"got {estimator!r}/{merge_space!r}")
    fold_prefixes = [fold_prefix(k) for k in range(folds)] if estimator == "data" else []
    if granularity not in GRANULARITIES or local_init not in LOCAL_INITS:
        raise ValueError(f"granularity/local_init: expected {GRANULARITIES}/{LOCAL_INITS}, "
                         f"got {granularity!r}/{local_init!r}")
    server_opt = server_opt or server_sgd(1.0)
    layers = param_layers(init) if granularity == "layer" else None
    width = () if layers is None else (len(layers),)

    def init_fn(gen, clusters):
        n = len(clusters)
        params = {k: v.clone() for k, v in init.items()}
        states = {**add_prefix(stack_for_clients(init, n), LOCAL), **add_prefix(stack_for_clients(init, n), COPY)}
        states.update(add_prefix(stack_for_clients(init, n), M1))
        states.update(add_prefix(stack_for_clients({k: v * v for k, v in init.items()}, n), M2))
        for prefix in fold_prefixes:
            states.update(add_prefix(stack_for_clients(init, n), prefix))
        for key in (TRACE_F, TRACE_L, DIST2, TRACE_C):
            states[key] = torch.zeros(n, *width)
        states[COUNT], states[NOISE] = torch.zeros(n), torch.zeros(n)
        server = {"params": params, "opt": server_opt.init(params), "round": torch.zeros((), dtype=torch.long),
                  TRACE_F: torch.zeros(width)}
        return server, states

    def broadcast(server):
        r = int(server["round"])
        if r < federated_rounds:
            return dict(server["params"])
        return add_prefix(server["params"], FINAL) if r == federated_rounds else {}

    def client_init(payload, client_state, batches):
        final = prefixed(payload, FINAL)
        out = {} if final else {k: v for k, v in payload.items()}
        if payload and not final and local_init == "federated":
            return add_prefix(out, FED)  # local training waits for the final federated model
        trainable = add_prefix(out, FED)
        for prefix in (LOCAL, *fold_prefixes):  # the local LoRA and the fold LoRAs train alike
            own = dict(final) if final and local_init == "federated" else prefixed(client_state, prefix)
            trainable.update(add_prefix(own, prefix))
        return trainable

    def loss(trainable, payload, client_state, batch):
        value = torch.zeros((), dtype=batch["x"].dtype)
        for prefix in (FED, LOCAL):
            part = prefixed(trainable, prefix)
            if part:
                value = value + task_loss(alg.apply(part, batch["x"]), batch["y"], batch["w"], objective)
        for k, prefix in enumerate(fold_prefixes):  # fold k's LoRA sees only the rows of fold k
            part = prefixed(trainable, prefix)
            if part:
                w = batch["w"] * fold_mask(batch["x"], folds, k)
                value = value + task_loss(alg.apply(part, batch["x"]), batch["y"], w, objective)
        return value

    def loglik(params, x, y):
        return -task_loss(alg.apply(params, x), y, torch.ones(x.shape[0], dtype=x.dtype), objective)

    def client_final(trainable, payload, client_state, num_examples, batches):
        upload = prefixed(trainable, FED)
        local = prefixed(trainable, LOCAL) or prefixed(client_state, LOCAL)
        received = prefixed(payload, FINAL) or (dict(payload) if payload else prefixed(client_state, COPY))
        state = {**add_prefix(local, LOCAL), **add_prefix(received, COPY)}
        fold_models = [prefixed(trainable, p) or prefixed(client_state, p) for p in fold_prefixes]
        for prefix, model in zip(fold_prefixes, fold_models, strict=True):
            state.update(add_prefix(model, prefix))
        count = client_state[COUNT]
        first, second = update_moments(prefixed(client_state, M1), prefixed(client_state, M2), local, count, window)
        state.update(add_prefix(first, M1))
        state.update(add_prefix(second, M2))
        state[COUNT] = count + 1
        state[NOISE] = torch.full_like(count, lr / (2 * batches["w"].shape[-1]))
        state[TRACE_C] = torch.zeros_like(client_state[TRACE_C])
        if estimator == "data":
            state[TRACE_F] = torch.zeros_like(client_state[TRACE_F])  # the server's spread is used
            state[TRACE_L] = fold_trace(fold_models, layers, scale=alpha)
            state[DIST2] = delta_distance(received, local, layers, scale=alpha)
            return upload, state
        tr_f, tr_l, metric, cross = _traces(received, local, first, second, num_examples, batches)
        state[TRACE_F], state[TRACE_L] = tr_f, tr_l
        if cross is not None:
            state[TRACE_C] = cross
        state[DIST2] = squared_distance(received, local, layers, metric)
        return upload, state

    def _traces(fed: Params, local: Params, first: Params, second: Params, n: Tensor,
                batches: dict) -> tuple[Tensor, Tensor, Params | None, Tensor | None]:
        """(tr_F, tr_L, the metric of the bias distance (local Fisher, None: Euclidean), cross-trace c or None)."""
        if estimator == "dispersion":  # tr_F comes from the server's across-client spread
            return next(iter(local.values())).new_zeros(width), iterate_trace(first, second, layers), None, None
        steps = min(fisher_steps, batches["w"].shape[0])
        x = batches["x"][:steps].reshape(-1, *batches["x"].shape[2:])
        y = batches["y"][:steps].reshape(-1, *batches["y"].shape[2:])
        w = batches["w"][:steps].reshape(-1)
        n = n.to(x.dtype)
        if estimator == "paper":  # inverse diagonal Fisher per factor, c = rho sqrt(a b)
            g_fed, g_loc = per_example_grads(loglik, fed, x, y), per_example_grads(loglik, local, x, y)
            f_fed, f_loc = fisher_from_grads(g_fed, w), fisher_from_grads(g_loc, w)
            a = laplace_trace(f_fed, n, damping, layers, weighted=False)
            b = laplace_trace(f_loc, n, damping, layers, weighted=False)
            return a, b, None, gradient_correlation(g_fed, g_loc, w, layers) * torch.sqrt(a * b)
        f_fed, f_loc = diagonal_fisher(loglik, fed, x, y, w), diagonal_fisher(loglik, local, x, y, w)
        if estimator == "laplace_fisher":
            return (laplace_trace(f_fed, float(total_examples), damping, layers, weighted),
                    laplace_trace(f_loc, n, damping, layers, weighted), f_loc if weighted else None, None)
        batch = batches["w"].shape[-1]
        return (sgd_trace(f_fed, lr, batch, layers, scale=n / total_examples),
                sgd_trace(f_loc, lr, batch, layers), f_loc, None)

    def aggregate(server, uploads, num_examples):
        server = {**server, "round": server["round"] + 1}
        if not uploads:
            return server
        avg = {k: weighted_mean(v, num_examples) for k, v in uploads.items()}
        params, opt = server_opt.update(server["params"], avg, server["opt"])
        spread = (delta_spread(uploads, num_examples, layers, scale=alpha) if estimator == "data"
                  else client_spread(uploads, num_examples, layers))
        return {**server, "params": params, "opt": opt, TRACE_F: spread}

    def terms(server, client_state) -> dict[str, Tensor]:
        """a = tr S_F, b = tr S_L, c (paper), d^2, bias and lambda of one client, as ``weight`` uses them."""
        tr_l = client_state[TRACE_L]
        server_fed = estimator in ("dispersion", "data")
        tr_f = server[TRACE_F].to(tr_l.dtype).expand_as(tr_l) if server_fed else client_state[TRACE_F]
        c = client_state[TRACE_C]
        if estimator == "paper":
            bias, lam = torch.zeros_like(tr_l), paper_weight(tr_f, tr_l, c)
        else:
            bias = bias_from_distance(client_state[DIST2], tr_f, tr_l) if bias_term else torch.zeros_like(tr_l)
            lam = mixing_weight(tr_l, tr_f, bias)
        return {"a": tr_f, "b": tr_l, "c": c, "d2": client_state[DIST2], "bias": bias,
                "eta_over_2b": client_state[NOISE], "lambda": lam}

    def weight(server, client_state) -> Tensor:
        """lambda of one client (scalar, or one per layer) from its stored traces."""
        return terms(server, client_state)["lambda"]

    def merged(server, client_state, lam: Tensor) -> Params:
        merge = merge_delta_w if merge_space == "delta" else merge_factors
        return merge(server["params"], prefixed(client_state, LOCAL), lam)

    def personalize(server, client_state):
        return merged(server, client_state, weight(server, client_state))

    alg = lora_algorithm("potara", template, objective, lr, weight_decay, init=init_fn, broadcast=broadcast,
                         client_init=client_init, loss=loss, client_final=client_final, aggregate=aggregate,
                         personalize=personalize, private_keys=(LOCAL, COPY, M1, M2, "trace.", "fold"),
                         merging=Merging(merged, weight, tuple(layers) if layers is not None else None, terms))
    return alg


@dataclass(frozen=True)
class PotaraOptions(LoraOptions):
    """Potara: federated rounds R_f, lambda estimator, merge space, granularity, bias term, local LoRA init.

    ``weighted``: curvature-weighted traces tr(F Sigma) for laplace_fisher (else plain tr Sigma).
    """

    #: rounds R_f of FedIT before the final federated LoRA is downloaded
    federated_rounds: int = 5
    #: lambda estimator: 'data' (ours, chosen on selection seeds), 'paper', 'sgd_fisher', 'laplace_fisher' or
    #: 'dispersion' (docs/potara.md)
    estimator: str = "data"
    #: merge 'delta' (exact dW = BA mix by rank stacking, ours) or 'factor' (A and B mixed apart, the paper's)
    merge_space: str = "delta"
    #: one lambda per 'client' or per LoRA 'layer'
    granularity: str = "client"
    #: include the bias term max(0, d^2 - tr S_F - tr S_L) in lambda's denominator (not used by 'paper')
    bias_term: bool = True
    #: local LoRA starts from the shared initial adaptors ('W0') or the final 'federated' LoRA
    local_init: str = "W0"
    #: laplace_fisher and paper: damping added to n F before inverting
    damping: float = 1e-4
    #: laplace_fisher: curvature-weighted traces tr(F S) (false: plain tr S)
    weighted: bool = True
    #: batches of the round the Fisher is estimated on
    fisher_steps: int = 2
    #: dispersion: rounds of running moments of the local LoRA's iterates
    window: int = 5
    #: data: number K of disjoint-fold LoRAs for the local variance (2 = split-half; 4 chosen on selection seeds)
    folds: int = 4

    def check(self, s: str) -> None:
        super().check(s)
        require(self.federated_rounds >= 1, f"{s}.federated_rounds", "an integer >= 1", self.federated_rounds)
        require(self.estimator in ESTIMATORS, f"{s}.estimator", f"one of {list(ESTIMATORS)}", self.estimator)
        require(self.merge_space in MERGE_SPACES, f"{s}.merge_space", f"one of {list(MERGE_SPACES)}",
                self.merge_space)
        require(self.granularity in GRANULARITIES, f"{s}.granularity", f"one of {list(GRANULARITIES)}",
                self.granularity)
        require(self.local_init in LOCAL_INITS, f"{s}.local_init", f"one of {list(LOCAL_INITS)}", self.local_init)
        require(self.damping > 0, f"{s}.damping", "a number > 0", self.damping)
        require(self.fisher_steps >= 1, f"{s}.fisher_steps", "an integer >= 1", self.fisher_steps)
        require(self.window >= 1, f"{s}.window", "an integer >= 1", self.window)
        require(self.folds >= 2, f"{s}.folds", "an integer >= 2", self.folds)


@register("potara", PotaraOptions, "Potara: federated and local LoRA merged in delta-W space, closed-form lambda")
def build_potara(model: nn.Module, ctx: BuildContext, options: PotaraOptions) -> Algorithm:
    t, init = options.template(model)
    return potara(t, init, ctx.objective, federated_rounds=options.federated_rounds,
                  total_examples=ctx.total_examples, estimator=options.estimator,
                  granularity=options.granularity, bias_term=options.bias_term, local_init=options.local_init,
                  damping=options.damping, weighted=options.weighted, fisher_steps=options.fisher_steps,
                  window=options.window, folds=options.folds, merge_space=options.merge_space,
                  alpha=options.alpha, **common(ctx))
