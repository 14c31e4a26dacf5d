"""bouquet: personalized federated fine-tuning with low-rank adaptors (FLoRAL, Potara and baselines)."""

__version__ = "0.1.0"
