"""Flower is an optional dependency (``pip install bouquet[flower]``): without it these tests are not collected."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("flwr") else ["test_*.py"]
