"""Low-rank adaptor layers: mixtures of C LoRAs (FLoRAL), the router, injection, preconditioning, merging.

Parameter names inside a `MixtureModel`: `model.<path>.base.<weight|bias>` (the wrapped layer),
`model.<path>.lora_A` / `lora_B` / `lora_bias` (adaptors, leading dim C; norm adaptors use
`lora_weight` / `lora_bias`) and `router.logits`; `param_role(name)` classifies them.
"""

from .context import MixtureContext
from .conv import CONV_VARIANTS, ConvSplit, MixtureConv2d, split_conv
from .functional import mixture_conv2d_delta, mixture_linear_delta
from .inject import (
    adaptor_parameter_count,
    freeze_base,
    inject,
    name_matches,
    param_role,
    split_params,
)
from .linear import MixtureLinear
from .merge import conv_delta_kernel, load_merged, lora_delta_weight, merge_lora_models
from .model import MixtureModel
from .norm import MixtureNorm
from .precondition import precondition_conv, precondition_linear, precondition_lora_grads
from .rank import conv_rank_dims, resolve_rank
from .router import Router, mixture_weights

__all__ = [
    "CONV_VARIANTS",
    "ConvSplit",
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
    "inject",
    "load_merged",
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
    "resolve_rank",
    "split_conv",
    "split_params",
]
