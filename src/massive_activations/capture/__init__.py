"""One pass over a checkpoint: prompts, forward hooks, per-layer statistics, activations."""
