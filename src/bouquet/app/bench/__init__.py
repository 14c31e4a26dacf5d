"""Benchmarks shipped with the package (``bouquet bench speed|scale``); ``benchmarks/speed/`` holds thin scripts.

``workload`` builds the FLoRAL MNIST workload and counts its FLOPs, ``pfl_reference`` is the plain
PyTorch client loop in the style of PFLlib, ``speed`` runs the engines side by side (each in its own
process, for peak RSS) and ``scale`` measures many registered clients.
"""
