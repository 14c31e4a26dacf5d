"""The engine on CUDA (``device = "cuda"``): same numbers as on the CPU. Marked ``gpu``; skipped without a GPU."""

import pytest
import torch

from bouquet.algorithms import RouterConfig
from bouquet.algorithms.floral import floral, wrap
from bouquet.data import DataSpec, FederatedDataset, PooledClients, build_dataset
from bouquet.engine.batching import SplitArrays, padded_split
from bouquet.engine.fast_linear import FastLinear
from bouquet.engine.simulator import RunSpec, Simulator
from bouquet.models import build_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _run(device: str, vectorized: bool, hand_batched: bool = True, cnn: bool = False):
    if cnn:
        data = build_dataset(DataSpec(name="mnist5k", num_clients=6, num_clusters=2, shift="rotate",
                                      train_per_client=20, test_per_client=5, resample=True, seed=0))
    else:
        data = build_dataset(DataSpec(name="digits", num_clients=8, num_clusters=2, shift="label_shift", seed=0))
    torch.manual_seed(0)
    net = build_model("cifar_cnn", data.input_shape, data.num_outputs) if cnn else \
        build_model("mlp", data.input_shape, data.num_outputs, hidden=16)
    model = wrap(net, 2, 2, adaptor_bias=True)
    alg = floral(model.to(device), data.objective, lr=0.1)
    sim = Simulator(alg, data, RunSpec(rounds=3, clients_per_round=4, batch_size=8, vectorized=vectorized,
                                       hand_batched=hand_batched, device=device), seed=1)
    state = sim.init_state()
    losses = []
    for _ in range(3):
        state, rec = sim.run_round(state)
        losses.append(rec["train_loss"])
    return state, losses, sim.evaluate(state)


def test_fast_linear_on_cuda():
    x = torch.randn(4, 6, 5, device="cuda")
    w = torch.randn(4, 3, 5, device="cuda", requires_grad=True)
    (g,) = torch.autograd.grad(FastLinear.apply(x, w, None).sum(), w)
    assert g.device.type == "cuda"
    torch.testing.assert_close(g, torch.ones(4, 6, 3, device="cuda").mT @ x)


def test_cuda_vectorized_matches_cpu_sequential():
    """Rounds on the GPU (vectorized) reproduce the CPU reference within float tolerance."""
    gpu_state, gpu_losses, gpu_eval = _run("cuda", True)
    cpu_state, cpu_losses, cpu_eval = _run("cpu", False)
    assert all(v.device.type == "cuda" for v in gpu_state.server["params"].values())
    assert gpu_losses == pytest.approx(cpu_losses, rel=1e-4, abs=1e-5)
    for k, v in cpu_state.server["params"].items():
        torch.testing.assert_close(gpu_state.server["params"][k].cpu(), v, rtol=1e-3, atol=1e-4)
    assert gpu_eval["mean"] == pytest.approx(cpu_eval["mean"], abs=0.02)


@pytest.mark.parametrize("cnn", [False, True], ids=["mlp-kernels", "conv-kernels"])
def test_cuda_kernels_match_cpu_sequential(cnn):
    """The hand-batched MLP kernels and the batched conv kernels on the GPU reproduce the CPU client loop."""
    gpu_state, gpu_losses, gpu_eval = _run("cuda", True, cnn=cnn)
    cpu_state, cpu_losses, cpu_eval = _run("cpu", False, hand_batched=False, cnn=cnn)
    assert gpu_losses == pytest.approx(cpu_losses, rel=1e-3, abs=1e-4)
    for k, v in cpu_state.server["params"].items():
        torch.testing.assert_close(gpu_state.server["params"][k].cpu(), v, rtol=1e-3, atol=1e-4)
    assert gpu_eval["mean"] == pytest.approx(cpu_eval["mean"], abs=0.02)


def test_auto_device_picks_cuda():
    sim_state, _, _ = _run("auto", True)
    assert all(v.device.type == "cuda" for v in sim_state.server["params"].values())


def test_pooled_clients_gather_on_cuda():
    """Index-pooled clients: the pool and its row index move to the device; batches equal the CPU's."""
    gen = torch.Generator().manual_seed(0)
    x_pool = torch.randn(30, 4, generator=gen)
    rows_tr, rows_te = torch.randint(0, 20, (50, 3), generator=gen), torch.randint(20, 30, (50, 2), generator=gen)
    clients = PooledClients.build(x_pool, torch.arange(50) % 2, rows_tr, rows_tr % 3, rows_te, rows_te % 3)
    data = FederatedDataset("pooled", clients, (4,), 3, "classification", 2)
    cpu = SplitArrays.from_dataset(data, "train")
    gpu = cpu.to("cuda")
    index, weight = padded_split(cpu, torch.tensor([1, 7, 49]))
    got, want = gpu.gather(index, weight), cpu.gather(index, weight)
    assert got["x"].device.type == "cuda" and gpu.rows.device.type == "cuda"
    assert all(torch.equal(got[k].cpu(), want[k]) for k in ("x", "y", "w"))


def test_cuda_conv_kernels_pass_their_check_with_the_official_noisy_router():
    """Router noise on CUDA: the first-step check restores the CUDA RNG state too, so the kernels are trusted."""
    data = build_dataset(DataSpec(name="mnist5k", num_clients=6, num_clusters=2, shift="rotate",
                                  train_per_client=20, test_per_client=5, resample=True, seed=0))
    torch.manual_seed(0)
    model = wrap(build_model("cifar_cnn", data.input_shape, data.num_outputs), 2, 2, adaptor_bias=True)
    alg = floral(model.to("cuda"), data.objective, lr=0.1,
                 router=RouterConfig(lr=0.1, noise=1.0, floor=0.01, init_std=1.0))
    sim = Simulator(alg, data, RunSpec(rounds=1, clients_per_round=4, batch_size=8, device="cuda"), seed=1)
    sim.run_round(sim.init_state())
    assert sim.training_path == "batched conv kernels"
