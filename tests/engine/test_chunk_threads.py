import threading

import pytest
import torch

from bouquet.engine.chunk_threads import map_chunks, resolve_workers


@pytest.fixture(autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_results_keep_their_order_and_run_on_worker_threads():
    def work(i):
        return i, threading.current_thread().name, torch.get_num_threads()

    out = map_chunks(work, list(range(7)), workers=2)
    assert [o[0] for o in out] == list(range(7))
    assert all(name.startswith("bouquet-chunk") for _, name, _ in out)
    assert {threads for _, _, threads in out} == {1}  # the two intra-op threads are shared out, one each
    assert torch.get_num_threads() == 2  # the caller's count is its own


def test_one_worker_or_one_item_runs_in_the_callers_thread():
    here = threading.current_thread().name
    assert map_chunks(lambda i: threading.current_thread().name, [0, 1], workers=1) == [here, here]
    assert map_chunks(lambda i: threading.current_thread().name, [0], workers=4) == [here]


def test_workers_run_under_the_callers_grad_mode_and_raise_its_errors():
    with torch.no_grad():
        assert map_chunks(lambda i: torch.is_grad_enabled(), [0, 1, 2], workers=2) == [False] * 3
    assert map_chunks(lambda i: torch.is_grad_enabled(), [0, 1, 2], workers=2) == [True] * 3

    def fail(i):
        if i == 2:
            raise ValueError("chunk 2")
        return i

    with pytest.raises(ValueError, match="chunk 2"):
        map_chunks(fail, [0, 1, 2, 3], workers=2)


def test_resolve_workers():
    assert resolve_workers(0, "cpu") == 2
    assert resolve_workers(0, "meta") == 1
    assert resolve_workers(3) == 3
    with pytest.raises(ValueError, match="workers must be >= 0"):
        resolve_workers(-1)
