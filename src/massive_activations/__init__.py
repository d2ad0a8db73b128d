"""Measure how massive activations emerge while transformers train.

The science as a plain library: no orchestration imports here, so notebooks and other
orchestrators can use it unchanged.
"""

__version__ = "0.1.0"
