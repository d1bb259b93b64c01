"""Attention analyses: weight-only layer-0 decomposition and head-role tagging."""
