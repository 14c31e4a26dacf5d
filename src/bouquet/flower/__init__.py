"""The Flower translation layer: bouquet's round driver and client work behind Flower messages (docs/flower.md).

Modules (import them directly; ``flwr`` is an optional dependency, ``pip install bouquet[flower]``):

- ``strategy``: ``BouquetStrategy``, the round driver as a Message-API ``Strategy``
- ``client``: the ClientApp's handlers (query, train, evaluate) over ``engine.client_work``
- ``job``: ``FlowerJob``, what both sides need of one (algorithm, seed)
- ``records``: tensor dicts <-> records (Flower's ``ArrayRecord`` layout, or packed: one record), message key layout
- ``discovery``: the query handshake (which node serves which client; the federation's ``DatasetInfo``)
- ``node_state``: a node's clients' private states (``Context.state`` or a state directory of files)
- ``deploy``: start/stop a SuperLink and SuperNodes on this machine (insecure, TLS, node authentication,
  optionally with node workers)
- ``node_worker``: ``bouquet node-worker``, one long-lived process running a SuperNode's ClientApp tasks
  (``flower-supernode --isolation process``) instead of Flower's process per message
- ``supernode``: ``bouquet supernode``, Flower 1.42's SuperNode with its fixed waits (3 s idle poll...) as options
- ``grid``: ``PromptGrid``, the deployment grid's ``send_and_receive`` without Flower's 3 s reply polls
- ``credentials``: throw-away TLS certificates and SuperNode key pairs

The ``ServerApp``/``ClientApp`` objects, which build a job from a run config, and ``bouquet run --engine
flower-sim | flower`` live in the app layer (``bouquet.app.flower_apps``, ``bouquet.app.flower_run``).
"""
