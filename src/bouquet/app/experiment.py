"""The experiment factory: an experiment's data, model and algorithm for one seed, built the same way by
every engine and process (the simulator's runner, the Flower ServerApp and ClientApps, the benchmarks).
"""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from ..algorithms import ALGORITHMS, Algorithm, BuildContext
from ..checks import ConfigError
from ..data import DataSpec, build_dataset
from ..data.federated import DatasetInfo, FederatedDataset
from ..models import build_model
from ..models.text import NUM_LAYERS as MINILM_LAYERS
from .config import Experiment
from .init_adapter import read_peft_adapter, with_initial_adaptors
from .pretrain import load_pretrained


def data_for_seed(exp: Experiment, seed: int) -> DataSpec:
    """The data seed follows the run seed, so repetitions differ in data draws too (as in the paper)."""
    return replace(exp.data, seed=exp.data.seed + seed)


def dataset_for_seed(exp: Experiment, seed: int) -> FederatedDataset:
    """The federated dataset of one repetition."""
    return build_dataset(data_for_seed(exp, seed))


def build_context(exp: Experiment, data: FederatedDataset | DatasetInfo) -> BuildContext:
    """What the algorithm builders may know of the run."""
    return BuildContext(objective=data.objective, num_clusters=data.num_clusters,
                        total_examples=data.total_train_examples(), train=exp.train, server=exp.server)


def seeded_model(exp: Experiment, data: FederatedDataset | DatasetInfo, seed: int) -> nn.Module:
    """Every global RNG seeded, then the experiment's model (pretrained when it has a [pretrain] table)."""
    # Every global RNG is seeded, so a run's checkpoints (which hold them all) are reproducible too.
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    check_cached_features(exp, data)
    # Factories raise ValueError for option values that cannot work with this data (an image model on
    # vectors): user errors, reported like config errors.
    try:
        model = build_model(exp.model.name, data.input_shape, data.num_outputs, **exp.model.options)
    except ValueError as err:
        raise ConfigError(f"model.name: {exp.model.name!r} cannot be built for {data.name!r}: {err}") from None
    except RuntimeError as err:  # a layer the input is too small for, found while building
        raise ConfigError(_mismatch(exp, data, err)) from None
    check_forward(exp, data, model)
    return load_pretrained(model, exp, data) if exp.pretrain is not None else model


def check_cached_features(exp: Experiment, data: FederatedDataset | DatasetInfo) -> None:
    """A model on cached hidden states must start where the dataset's frozen layers stopped (ConfigError)."""
    frozen = (getattr(data, "meta", None) or {}).get("frozen_layers")
    if not frozen:
        return
    opts, what = exp.model.options, f"{data.name} holds the bundled MiniLM's hidden states after {frozen} layers"
    if exp.model.name == "hf":
        got = opts.get("cached_layers", 0)
        if got != frozen:
            raise ConfigError(f"model.cached_layers: {what}; expected cached_layers = {frozen}, got {got} "
                              "(or set data.tokenizer for token ids)")
        if opts.get("path"):
            raise ConfigError(f"model.path: {what}; expected no path (the bundled MiniLM), got {opts['path']!r} "
                              "(set data.tokenizer to the checkpoint for token ids)")
    elif exp.model.name == "minilm" and opts.get("top_layers", 1) != MINILM_LAYERS - frozen:
        raise ConfigError(f"model.top_layers: {what}; expected top_layers = {MINILM_LAYERS - frozen}, "
                          f"got {opts.get('top_layers', 1)}")


def check_forward(exp: Experiment, data: FederatedDataset | DatasetInfo, model: nn.Module) -> None:
    """One forward pass on a zero example (eval mode, no RNG drawn, no state changed); a failure is a ConfigError.

    Token-id inputs (a dataset's int64 rows, or a Hugging Face model's ids) are probed with ids, not floats.
    """
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    clients = getattr(data, "clients", None)
    if clients:
        first = clients[0].x_train[:1]
        probe = first if not first.is_floating_point() else torch.zeros(1, *data.input_shape, dtype=dtype)
    else:  # a server without rows (DatasetInfo): token ids for language models and HF checkpoints
        ids = data.objective == "language_modeling" or hasattr(model, "checkpoint")
        probe = torch.zeros(1, *data.input_shape, dtype=torch.long if ids else dtype)
    expected = (1, data.num_outputs) if data.objective != "language_modeling" else (1, *data.input_shape,
                                                                                     data.num_outputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe)
    except RuntimeError as err:
        raise ConfigError(_mismatch(exp, data, err)) from None
    finally:
        model.train(was_training)
    if tuple(out.shape) != expected:
        raise ConfigError(f"model.name: {exp.model.name!r} on input shape {tuple(data.input_shape)} of "
                          f"{data.name!r} gives outputs of shape {tuple(out.shape[1:])}; expected "
                          f"{expected[1:]} (data.num_outputs)")


def _mismatch(exp: Experiment, data: FederatedDataset | DatasetInfo, err: RuntimeError) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
    return (f"model.name: {exp.model.name!r} does not fit input shape {tuple(data.input_shape)} of {data.name!r} "
            f"(a forward pass on one example failed: {first[:160]}); expected a model made for this input shape")


def build_algorithm(exp: Experiment, data: FederatedDataset | DatasetInfo, name: str,
                    seed: int) -> tuple[Algorithm, int]:
    """Seeded (and pretrained) model, then the algorithm; returns it with the base model's parameter count."""
    model = seeded_model(exp, data, seed)
    base = sum(p.numel() for p in model.parameters())
    try:
        alg = ALGORITHMS[name].build(model, build_context(exp, data), exp.algo[name])
    except ValueError as err:  # an adapter target matching no layer, a head covering the whole model, ...
        raise ConfigError(f"algo.{name}: {err}") from None
    if exp.init.peft_adapter is not None:
        alg = with_initial_adaptors(alg, read_peft_adapter(exp.init.peft_adapter), exp.init.peft_adapter)
    return alg, base
