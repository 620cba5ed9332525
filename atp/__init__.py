"""atp: a reproducible pipeline for Active Latent Planning (ATP-Latent).

Kept import-light on purpose: small helpers (config resolution, data prep) must
not pay for importing torch or mlflow.
"""

__version__ = "0.1.0"
