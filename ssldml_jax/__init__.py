"""ssldml_jax: self-supervised deep metric learning of 12-lead ECG representations in JAX/Flax."""

__version__ = "0.1.0"
