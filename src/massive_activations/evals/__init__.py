"""Evaluations across checkpoints: SAEs, ITDA, quantization, splices, and their statistics."""
