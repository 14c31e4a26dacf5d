"""Low-rank adaptor layers: mixtures of C LoRAs (FLoRAL), the router, injection, preconditioning, merging.

Parameter names inside a `MixtureModel`: `model.<path>.base.<weight|bias>` (the wrapped layer),
`model.<path>.lora_A` / `lora_B` / `lora_bias` (adaptors, leading dim C; norm adaptors use
`lora_weight` / `lora_bias`) and `router.logits`; `param_role(name)` classifies them. `EnsembleModel`
mixes whole models instead.
"""

from .ensemble import MEMBERS, SKIP_BELOW, EnsembleModel, independent_copies, member_of, reinitialize
from .functional import conv_delta_kernel, conv_rank_dims, mixture_conv2d_delta, mixture_linear_delta, resolve_rank
from .inject import (
    adaptor_parameter_count,
    freeze_base,
    inject,
    name_matches,
    param_role,
    split_params,
)
from .layers import CONV_VARIANTS, ConvSplit, MixtureConv2d, MixtureLinear, MixtureNorm, split_conv
from .merge import load_merged, lora_delta_weight, merge_lora_models
from .mixture import MixtureContext, MixtureModel, Router, mixture_weights
from .precondition import precondition_conv, precondition_linear, precondition_lora_grads

__all__ = [
    "CONV_VARIANTS",
    "MEMBERS",
    "SKIP_BELOW",
    "ConvSplit",
    "EnsembleModel",
    "MixtureContext",
    "MixtureConv2d",
    "MixtureLinear",
    "MixtureModel",
    "MixtureNorm",
    "Router",
    "adaptor_parameter_count",
    "conv_delta_kernel",
    "conv_rank_dims",
    "freeze_base",
    "independent_copies",
    "inject",
    "load_merged",
    "member_of",
    "lora_delta_weight",
    "merge_lora_models",
    "mixture_conv2d_delta",
    "mixture_linear_delta",
    "mixture_weights",
    "name_matches",
    "param_role",
    "precondition_conv",
    "precondition_linear",
    "precondition_lora_grads",
    "reinitialize",
    "resolve_rank",
    "split_conv",
    "split_params",
]
