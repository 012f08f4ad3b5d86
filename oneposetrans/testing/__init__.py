"""The tiny-model kit: real on-disk formats with tiny random weights, for tests and smoke runs."""

from oneposetrans.testing.tiny import KIT_VERSION, cached_tiny_models, make_tiny_models

__all__ = ["KIT_VERSION", "cached_tiny_models", "make_tiny_models"]
