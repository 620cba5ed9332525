"""The KV cache of the latent loop under gradient checkpointing."""

from __future__ import annotations

import torch


def replayable_cache():
    """A fresh `ReplayableCache` (transformers is imported on first use)."""
    return _replayable_cache_class()()


_CACHE_CLASS = None


def _replayable_cache_class():
    global _CACHE_CLASS
    if _CACHE_CLASS is not None:
        return _CACHE_CLASS
    import copy

    from transformers import DynamicCache

    class ReplayableCache(DynamicCache):
        """A KV cache for one forward pass of the latent loop that gradient checkpointing can recompute.

        With checkpointing, the backward pass runs each decoder layer's forward again, and that forward
        appends its keys and values to the cache a second time: on a plain DynamicCache the recomputed
        attention would see the keys of every later pass (and of itself twice). This cache remembers, per
        layer, what the cache held before the pass's first update; a second update of the same layer (the
        recomputation) returns that start plus the recomputed keys, as the original forward saw them, and
        changes nothing. So every pass gets its own object: `next_pass()` shares the tensors (no copy)
        with a new object, and the loop calls it after every pass (`next_pass(cache)` below).
        """

        def __init__(self, previous=None):
            super().__init__()
            self._start: dict[int, tuple] = {}
            if previous is not None:
                self.layers = [
                    copy.copy(layer) for layer in previous.layers
                ]  # DynamicLayer.update rebinds, never writes in place

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            if layer_idx in self._start:  # the recomputation of this pass's layer
                keys, values = self._start[layer_idx]
                if keys is None:
                    return key_states, value_states
                return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)
            layer = self.layers[layer_idx] if layer_idx < len(self.layers) else None
            self._start[layer_idx] = (layer.keys, layer.values) if layer is not None and layer.is_initialized else (None, None)
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)

        def next_pass(self):
            return ReplayableCache(self)

    _CACHE_CLASS = ReplayableCache
    return _CACHE_CLASS


def next_pass(cache):
    """The cache object for the next forward pass (a new one for a ReplayableCache; any other cache is reused)."""
    return cache.next_pass() if cache is not None and hasattr(cache, "next_pass") else cache
