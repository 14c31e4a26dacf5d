"""Benchmark-only diagnostic (``benchmarks/flower_load.py``): count the SuperLink's HTTP requests by route.

Put on ``PYTHONPATH`` with ``BOUQUET_REQUEST_COUNTS=FILE`` set; in a SuperLink process (``flower-superlink`` or
``bouquet superlink``) it wraps
Flower 1.42's ``ProtobufTranslationMiddleware.dispatch`` (every Fleet, ServerAppIo and Control request passes
through it) to count requests per path, and rewrites FILE (JSON, path -> count) twice a second. Any other
process is left as it is. Nothing is changed in what a request does.
"""

import collections
import json
import os
import sys
import threading
import time

_FILE = os.environ.get("BOUQUET_REQUEST_COUNTS", "")

_ARGV = " ".join(getattr(sys, "orig_argv", sys.argv))
_SUPERLINK = "flower-superlink" in _ARGV or "bouquet superlink" in _ARGV

if _FILE and _SUPERLINK:
    from flwr.supercore.protobuf import translation

    _counts: collections.Counter = collections.Counter()
    _dispatch = translation.ProtobufTranslationMiddleware.dispatch

    async def _counted(self, request, call_next):
        _counts[request.url.path] += 1
        return await _dispatch(self, request, call_next)

    translation.ProtobufTranslationMiddleware.dispatch = _counted

    def _write() -> None:
        while True:
            time.sleep(0.5)
            tmp = f"{_FILE}.tmp"
            with open(tmp, "w") as f:
                json.dump(dict(_counts), f)
            os.replace(tmp, _FILE)

    threading.Thread(target=_write, daemon=True, name="bouquet-request-counts").start()
