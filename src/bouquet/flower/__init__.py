"""The Flower engine: bouquet algorithms on Flower's simulation and deployment runtimes (docs/flower.md).

Modules (import them directly; ``flwr`` is an optional dependency, ``pip install bouquet[flower]``):

- ``serverapp`` / ``clientapp``: the ``ServerApp`` and ``ClientApp`` named in ``[tool.flwr.app]``
- ``strategy``: ``BouquetStrategy``, any registered algorithm as a Message-API strategy
- ``client``: one client's training and evaluation (the local engine's functions, per client)
- ``task``: run config -> experiment, data and algorithm, built identically in every process
- ``records``: tensor dicts <-> ``ArrayRecord``, message key layout
- ``deploy``: start/stop a SuperLink and SuperNodes on this machine (insecure or TLS)
- ``engine``: ``bouquet run --engine flower-sim | flower``
"""
