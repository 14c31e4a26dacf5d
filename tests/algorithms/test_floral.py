"""FLoRAL: learns and recovers clusters, aggregates with p(k|c), keeps routers private, counts parameters."""

import json

import pytest
import torch
from torch import nn

from bouquet.algorithms import ALGORITHMS, StepInfo
from bouquet.algorithms.floral import RouterConfig, damped_server_lr, floral, wrap
from bouquet.algorithms.routing import MIXTURE_WEIGHT, ROUTER
from bouquet.app.cli import main
from bouquet.app.config import parse_experiment, with_run
from bouquet.app.runner import run_one
from bouquet.data import DataSpec, build_dataset
from bouquet.engine.simulator import RunSpec, Simulator

SYN = {
    "name": "syn",
    "data": {"name": "synthetic_linear", "num_clients": 10, "num_clusters": 2},
    "model": {"name": "linear"},
    "run": {"rounds": 250, "clients_per_round": 10, "batch_size": 4, "eval_every": 250},
    "train": {"lr": 0.1},
}


def _run(alg, data, rounds, **spec):
    sim = Simulator(alg, data, RunSpec(rounds=rounds, clients_per_round=data.num_clients, batch_size=4, **spec))
    state = sim.init_state()
    uploads_seen = []
    for _ in range(rounds):
        state, _ = sim.run_round(state)
    return sim, state, uploads_seen


def test_user_sequential_wrapped_in_one_call_learns_and_recovers_clusters():
    """The README path: a plain nn.Sequential, `wrap`, then `floral`, on FLoRAL's synthetic_linear task."""
    data = build_dataset(DataSpec(name="synthetic_linear", num_clients=10, num_clusters=2))
    torch.manual_seed(0)
    user = nn.Sequential(nn.Flatten(), nn.Linear(10, 3))
    alg = floral(wrap(user, num_adaptors=2, rank=1), data.objective, lr=0.1, router=RouterConfig(lr=0.1))
    sim, state, _ = _run(alg, data, 150)
    mse = sim.evaluate(state)["mean"]
    start = Simulator(alg, data, sim.spec).evaluate(sim.init_state())["mean"]
    assert mse < 0.1 and start > 1.0, (start, mse)
    assert alg.report(state.server, state.clients, data.clusters)["router_ari"] == 1.0
    # The user's own module is untouched (wrap copies it).
    assert [n for n, _ in user.named_parameters()] == ["1.weight", "1.bias"]


def test_acceptance_shape_floral_beats_fedavg_and_local_adaptor():
    """synthetic_linear through the registry and runner: FLoRAL fits both clusters, the baselines cannot."""
    exp = parse_experiment(SYN)
    data = build_dataset(exp.data)
    short = with_run(exp, rounds=100, eval_every=100)  # the baselines plateau early (about 1.4 and 3)
    res = {n: run_one(exp if n == "floral" else short, data, n, seed=0)[0] for n in ("floral", "fedavg",
                                                                                      "local_adaptor")}
    assert res["floral"]["last"]["mean"] < 0.05
    assert res["fedavg"]["last"]["mean"] > 1.0 and res["local_adaptor"]["last"]["mean"] > 1.0
    assert res["floral"]["extra"]["router_ari"] == 1.0


def test_router_logits_never_uploaded_and_mixture_weight_is_softmax():
    data = build_dataset(DataSpec(name="synthetic_linear", num_clients=4, num_clusters=2))
    torch.manual_seed(0)
    alg = floral(wrap(nn.Linear(10, 3), 2, 1), data.objective, lr=0.1,
                 router=RouterConfig(lr=0.5, noise=1.0, floor=0.01))
    server, clients = alg.init(torch.Generator(), data.clusters)
    cs = {ROUTER: torch.tensor([0.3, -0.2])}
    batch = {"x": torch.randn(4, 10), "y": torch.randn(4, 3), "w": torch.ones(4)}
    trainable = alg.client_init(alg.broadcast(server), cs, {k: v[None] for k, v in batch.items()})
    assert ROUTER in trainable
    upload, private = alg.client_final(trainable, alg.broadcast(server), cs, torch.tensor(4), {})
    assert not any(k.startswith("router") for k in upload)
    assert set(private) == {ROUTER}
    torch.testing.assert_close(upload[MIXTURE_WEIGHT], torch.softmax(cs[ROUTER], -1))  # no noise, no floor


def test_aggregation_weights_adaptor_c_by_n_times_pi():
    data = build_dataset(DataSpec(name="synthetic_linear", num_clients=4, num_clusters=2))
    torch.manual_seed(0)
    alg = floral(wrap(nn.Linear(10, 3), 2, 1), data.objective, lr=0.1)
    server, _ = alg.init(torch.Generator(), data.clusters)
    keys = list(server["params"])
    k_uploads = 3
    uploads = {k: torch.randn(k_uploads, *v.shape) for k, v in server["params"].items()}
    pi = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    n = torch.tensor([1.0, 2.0, 3.0])
    uploads[MIXTURE_WEIGHT] = pi
    new = alg.aggregate(server, uploads, n)["params"]
    for k in keys:
        if k.endswith("lora_A") or k.endswith("lora_B") or k.endswith("lora_bias"):
            for c in range(2):
                w = n * pi[:, c] / (n * pi[:, c]).sum()
                expect = (w.view(-1, *[1] * (uploads[k].dim() - 1)) * uploads[k]).sum(0)[c]
                torch.testing.assert_close(new[k][c], expect)
        else:
            torch.testing.assert_close(new[k], (n / n.sum()).view(-1, *[1] * (uploads[k].dim() - 1)).mul(
                uploads[k]).sum(0))


def test_vectorized_and_sequential_engines_agree():
    data = build_dataset(DataSpec(name="synthetic_linear", num_clients=6, num_clusters=2))
    finals = []
    for vectorized in (True, False):
        torch.manual_seed(0)
        alg = floral(wrap(nn.Linear(10, 3), 2, 1), data.objective, lr=0.1, router=RouterConfig(lr=0.3))
        sim = Simulator(alg, data, RunSpec(rounds=3, clients_per_round=4, batch_size=3, vectorized=vectorized))
        state = sim.init_state()
        for _ in range(3):
            state, _ = sim.run_round(state)
        finals.append(state)
    for k, v in finals[0].server["params"].items():
        torch.testing.assert_close(v, finals[1].server["params"][k], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(finals[0].clients[ROUTER], finals[1].clients[ROUTER], atol=1e-5, rtol=1e-4)


def test_optimal_router_is_exact_one_hot_and_frozen():
    data = build_dataset(DataSpec(name="synthetic_linear", num_clients=6, num_clusters=2))
    torch.manual_seed(0)
    alg = floral(wrap(nn.Linear(10, 3), 2, 1), data.objective, lr=0.1, optimal_router=True)
    sim, state, _ = _run(alg, data, 5)
    pi = torch.softmax(state.clients[ROUTER], -1)
    assert torch.equal(pi, torch.nn.functional.one_hot(data.clusters.long() % 2, 2).to(pi.dtype))
    assert alg.local_update.plain_sgd().rate(ROUTER) == 0.0


def test_paper_server_damping_moves_adaptors_by_lora_lr():
    lr_of = damped_server_lr(1.0, 0.1)
    assert lr_of("router.logits") == 1.0 and lr_of("model.1.base.weight") == 1.0
    assert lr_of("model.1.lora_A") == 0.1 and lr_of("model.1.lora_bias") == 0.1


def test_entropy_term_with_positive_weight_pushes_router_towards_uniform():
    data = build_dataset(DataSpec(name="synthetic_linear", num_clients=2, num_clusters=2))
    torch.manual_seed(0)
    alg = floral(wrap(nn.Linear(10, 3), 2, 1), data.objective, lr=0.1, router=RouterConfig(entropy=10.0))
    server, _ = alg.init(torch.Generator(), data.clusters)
    cs = {ROUTER: torch.tensor([1.0, 0.0])}
    batch = {"x": torch.zeros(1, 10), "y": torch.zeros(1, 3), "w": torch.zeros(1)}  # no data: entropy only
    tr = alg.client_init(alg.broadcast(server), cs, batch)
    g = torch.func.grad(lambda t: alg.loss(t, {}, cs, batch))(tr)[ROUTER]
    assert g[0] > 0 > g[1]  # descending lowers the larger logit: towards uniform


def test_paper_preset_options():
    opts = ALGORITHMS["floral_paper"].options()
    assert (opts.router.noise, opts.router.floor, opts.router.init_std) == (1.0, 0.01, 0.0)
    assert opts.paper_bias_init and opts.paper_server_damping and opts.paper_conv_rank_bug
    assert ALGORITHMS["floral_clean"].options().router == RouterConfig()  # the paper's clean form
    em = ALGORITHMS["floral_em"].options().router
    assert (em.select, em.explore, em.init_std) == ("em", 0.05, 1.0)
    clean = ALGORITHMS["floral"].options()
    assert (clean.router.noise, clean.router.floor, clean.paper_bias_init, clean.paper_server_damping) == (
        0.0, 0.0, False, False)


def test_parameter_overhead_matches_hand_count(tmp_path, capsys):
    """MLP 784-200-10, C = 4, rho = 1% (reference: 5,616 adaptor parameters, +3.5%)."""
    base = 784 * 200 + 200 + 200 * 10 + 10
    # layer 1: r = floor(0.01 * 784 * 200 / 984) = 1; layer 2: r = max(1, floor(0.01 * 2000 / 210)) = 1
    adaptors = 4 * (1 * 784 + 200 * 1 + 200) + 4 * (1 * 200 + 10 * 1 + 10)
    assert adaptors == 5616
    cfg = tmp_path / "m.toml"
    cfg.write_text('name = "m"\n[data]\nname = "mnist5k"\nnum_clients = 20\nnum_clusters = 4\nshift = "rotate"\n'
                   'train_per_client = 10\n[model]\nname = "mlp"\n[run]\nrounds = 1\nclients_per_round = 2\n'
                   'batch_size = 32\n[train]\nlr = 0.1\n')
    assert main(["run", str(cfg), "--algorithms", "floral", "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    counts = json.loads((tmp_path / "r" / "summary.json").read_text())["algorithms"]["floral"]["params"]
    assert counts["base"] == base and counts["adaptors"] == adaptors and counts["router"] == 4
    assert counts["per_client"] == base + adaptors + 4
    assert f"{base + adaptors + 4:,}" in printed and f"+{100 * (adaptors + 4) / base:.1f}%" in printed


def test_router_steps_refresh_the_router_on_the_downloaded_model_before_training():
    """router_steps descends the router-only loss at client_init, the same vmapped as client by client."""
    data = build_dataset(DataSpec(name="synthetic_linear", num_clients=4, num_clusters=2))
    torch.manual_seed(0)
    alg = floral(wrap(nn.Linear(10, 3), 2, 1), data.objective, lr=0.1, router=RouterConfig(lr=0.5, steps=3))
    sim, state, _ = _run(alg, data, 20)  # adaptors now differ, so the router has a gradient
    payload = alg.broadcast(state.server)
    c = data.clients[1]
    batches = {"x": c.x_train[None], "y": c.y_train[None], "w": torch.ones(1, len(c.y_train))}
    private = {ROUTER: torch.zeros(2)}
    trainable = alg.client_init(payload, private, batches)
    assert not torch.equal(trainable[ROUTER], private[ROUTER])
    batch = {k: v[0] for k, v in batches.items()}
    before = alg.loss({**payload, ROUTER: private[ROUTER]}, payload, private, batch)
    after = alg.loss(trainable, payload, private, batch)
    assert after < before
    stacked = {k: torch.stack([v, v]) for k, v in batches.items()}
    both = torch.vmap(alg.client_init, in_dims=(None, 0, 0), randomness="different")(
        payload, {ROUTER: torch.zeros(2, 2)}, stacked)
    torch.testing.assert_close(both[ROUTER][0], trainable[ROUTER])


def test_router_is_exempt_from_weight_decay():
    torch.manual_seed(0)
    alg = floral(wrap(nn.Linear(10, 3), 2, 1), "regression", lr=0.1, weight_decay=0.5)
    server, clients = alg.init(torch.Generator(), torch.tensor([0, 1]))
    params = {**alg.broadcast(server), ROUTER: torch.tensor([1.0, -1.0])}
    zeros = {k: torch.zeros_like(v) for k, v in params.items()}
    upd, _ = alg.local_update.update(zeros, alg.local_update.init(params), params, StepInfo(0, torch.tensor(1), {}))
    assert not upd[ROUTER].any()
    assert upd["model.base.weight"].abs().sum() > 0


def test_zero_router_init_has_a_router_gradient_after_one_round():
    """Zero logits and B = 0 make the router gradient 0 at the first step only: the A_c are drawn
    independently, so after one round the adaptors differ and the router moves (docs/floral.md)."""
    data = build_dataset(DataSpec(name="synthetic_linear", num_clients=4, num_clusters=2))
    torch.manual_seed(0)
    alg = floral(wrap(nn.Linear(10, 3), 2, 1), data.objective, lr=0.1, router=RouterConfig(lr=0.1, init_std=0.0))
    server, _ = alg.init(torch.Generator(), data.clusters)
    c = data.clients[0]
    batch = {"x": c.x_train, "y": c.y_train, "w": torch.ones(len(c.y_train))}
    cs = {ROUTER: torch.zeros(2)}

    def router_grad(srv):
        tr = alg.client_init(alg.broadcast(srv), cs, {k: v[None] for k, v in batch.items()})
        return torch.func.grad(lambda t: alg.loss(t, {}, cs, batch))(tr)[ROUTER]

    assert router_grad(server).abs().max() < 1e-7
    _, state, _ = _run(alg, data, 1)
    assert router_grad(state.server).abs().max() > 1e-4


def test_em_router_step_is_prior_times_likelihood_mixed_with_uniform():
    """router_select = "em": pi <- (1 - e) * softmax(log pi - n_k * loss_c) + e / C at each visit."""
    data = build_dataset(DataSpec(name="synthetic_linear", num_clients=4, num_clusters=2))
    torch.manual_seed(0)
    rc = RouterConfig(select="em", explore=0.1, temperature=2.0)
    alg = floral(wrap(nn.Linear(10, 3), 2, 1), data.objective, lr=0.1, router=rc)
    _, state, _ = _run(alg, data, 5)  # adaptors now differ
    payload = alg.broadcast(state.server)
    c = data.clients[2]
    batches = {"x": c.x_train[None], "y": c.y_train[None], "w": torch.ones(1, len(c.y_train))}
    prior = torch.tensor([0.3, -0.2])
    logits = alg.client_init(payload, {ROUTER: prior}, batches)[ROUTER]
    losses = torch.stack([((alg.apply({**payload, ROUTER: torch.tensor(v)}, c.x_train) - c.y_train) ** 2)
                          .sum(-1).mean() for v in ([0.0, -1e4], [-1e4, 0.0])])
    post = torch.softmax(torch.log_softmax(prior / 2.0, -1) - len(c.y_train) * losses, -1)
    torch.testing.assert_close(torch.softmax(logits / 2.0, -1), 0.9 * post + 0.05, rtol=1e-4, atol=1e-5)
    assert alg.local_update.plain_sgd().rate(ROUTER) == 0.0  # set by the EM step, not by SGD


def test_em_router_recovers_clusters_and_logs_entropy_and_drift():
    data = build_dataset(DataSpec(name="synthetic_linear", num_clients=10, num_clusters=2))
    torch.manual_seed(0)
    alg = floral(wrap(nn.Linear(10, 3), 2, 1), data.objective, lr=0.1, router=RouterConfig(select="em"))
    sim, state, _ = _run(alg, data, 150)
    ev = sim.evaluate(state)
    assert ev["router_ari"] == 1.0 and ev["mean"] < 0.05
    assert 0 <= ev["router_entropy"] < 0.5 and ev["router_drift"] > 1.0


def test_max_step_norm_engines_agree_and_a_tiny_cap_slows_training():
    """The step clip runs in the vectorized (general) path as in the sequential reference; a tiny cap moves less."""
    data = build_dataset(DataSpec(name="synthetic_linear", num_clients=6, num_clusters=2))
    moved = {}
    for cap in (None, 1e-3):
        finals = []
        for vectorized in (True, False):
            torch.manual_seed(0)
            alg = floral(wrap(nn.Linear(10, 3), 2, 1), data.objective, lr=0.1, max_step_norm=cap)
            sim = Simulator(alg, data, RunSpec(rounds=2, clients_per_round=6, batch_size=3, vectorized=vectorized))
            state = sim.init_state()
            init = {k: v.clone() for k, v in state.server["params"].items()}
            for _ in range(2):
                state, _ = sim.run_round(state)
            finals.append(state)
        for k, v in finals[0].server["params"].items():
            torch.testing.assert_close(v, finals[1].server["params"][k], atol=1e-5, rtol=1e-4)
        moved[cap] = sum(float((finals[0].server["params"][k] - init[k]).norm()) for k in init)
    assert moved[1e-3] < 0.2 * moved[None]


def test_max_step_norm_must_be_positive():
    exp = {**SYN, "algorithms": ["floral"], "algo": {"floral": {"max_step_norm": 0}}}
    with pytest.raises(ValueError, match="max_step_norm"):
        parse_experiment(exp)
