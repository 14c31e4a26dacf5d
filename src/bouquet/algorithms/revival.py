"""Component revival for routers chosen by loss (ours, beyond the paper): split a merged component.

The EM router can lock two clusters onto one component: the component nobody chooses is trained only by
the exploration share and never becomes anyone's best again. The server sees every sampled client's
uploaded mixture pi, so it tracks each component's share of the examples (an exponential average over
rounds). When a component's share falls below ``revive`` of the fair share 1/C, the server splits the
most used component i into the dead slot j: the clients that chose i this round are divided in two by the
top principal direction of their trained copies of adaptor i, and i and j become the two groups' weighted
means. For ``window`` rounds the broadcast names the twins (``TWIN``: the partner of each component, -1 for
none), and a visiting client splits its prior mass on the pair equally before its EM step, so the data
alone decides which twin it joins. Nothing extra goes up; the broadcast gains C integers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from .contract import Params

#: broadcast key: each component's twin (the partner it was split from or into), -1 for none
TWIN = "revival.twin"
#: decay of the exponential average of each component's share of the examples, per round
SHARE_DECAY = 0.9


def initial_revival(num: int) -> dict[str, Tensor]:
    """Server-side revival state: every component at its fair share, no twins, no window running."""
    return {"share": torch.full((num,), 1.0 / num, dtype=torch.float64),
            "twin": torch.full((num,), -1, dtype=torch.long), "left": torch.zeros((), dtype=torch.long),
            "splits": torch.zeros((), dtype=torch.long)}


def without_twin(payload: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The payload's model parameters (the twin vector is routing information, not a parameter)."""
    return {k: v for k, v in payload.items() if k != TWIN}


def share_twin_prior(logits: Tensor, twin: Tensor | None, temperature: float) -> Tensor:
    """Logits whose softmax(. / temperature) gives each twin pair the mean of the pair's prior mass (vmap-safe)."""
    if twin is None:
        return logits
    log_prior = torch.log_softmax(logits / temperature, dim=-1)
    partner = log_prior[..., twin.clamp_min(0)]
    shared = torch.logaddexp(log_prior, partner) - math.log(2.0)
    return temperature * torch.where(twin >= 0, shared, log_prior)


def revive_step(state: Mapping[str, Tensor], params: Params, uploads: Mapping[str, Tensor], mixture: Tensor,
                num_examples: Tensor, adaptor_keys: list[str], revive: float, window: int
                ) -> tuple[Params, dict[str, Tensor]]:
    """One round of revival after aggregation: update the shares, end a finished window, maybe split.

    ``uploads[k]`` are the clients' trained adaptor banks [K, C, ...]; ``params`` the aggregated ones [C, ...].
    """
    num = mixture.shape[1]
    n = num_examples.to(torch.float64)
    round_share = (n[:, None] * mixture.to(torch.float64)).sum(0) / n.sum().clamp_min(1e-30)
    share = SHARE_DECAY * state["share"] + (1 - SHARE_DECAY) * round_share
    left = (state["left"] - 1).clamp_min(0)
    twin = state["twin"] if int(left) > 0 else torch.full_like(state["twin"], -1)
    out = {"share": share, "twin": twin, "left": left, "splits": state["splits"]}
    if int(left) > 0 or float(share.min()) >= revive / num:
        return params, out
    dead, used = int(share.argmin()), int(share.argmax())
    chose = mixture[:, used] > 0.5
    groups = _split_by_principal_direction(uploads, adaptor_keys, chose, used)
    if groups is None:
        return params, out
    weights = (n * mixture[:, used].to(torch.float64))[chose]
    params = dict(params)
    for k in adaptor_keys:
        rows = uploads[k][chose, used].to(torch.float64)
        merged = params[k].clone()
        for slot, members in ((used, groups), (dead, ~groups)):
            w = weights[members]
            mean = (w.reshape(-1, *([1] * (rows.dim() - 1))) * rows[members]).sum(0) / w.sum()
            merged[slot] = mean.to(params[k].dtype)
        params[k] = merged
    share = share.clone()
    share[used] = share[dead] = (share[used] + share[dead]) / 2
    twin = torch.full_like(twin, -1)
    twin[used], twin[dead] = dead, used
    return params, {"share": share, "twin": twin, "left": torch.tensor(window, dtype=torch.long),
                    "splits": state["splits"] + 1}


def _split_by_principal_direction(uploads: Mapping[str, Tensor], adaptor_keys: list[str], chose: Tensor,
                                  component: int) -> Tensor | None:
    """Membership [K_chose] of one side of the split of the clients that chose ``component``, by the sign of
    their trained adaptor's projection on the top principal direction; None when a side would be empty."""
    if int(chose.sum()) < 2:
        return None
    x = torch.cat([uploads[k][chose, component].reshape(int(chose.sum()), -1).to(torch.float64)
                   for k in adaptor_keys], dim=1)
    centred = x - x.mean(0)
    if float(centred.abs().max()) == 0.0:
        return None
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    side = centred @ direction >= 0
    if bool(side.all()) or not bool(side.any()):
        return None
    return side
