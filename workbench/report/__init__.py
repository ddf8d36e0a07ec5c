"""Headless output: rich tables, JSON reports, TensorBoard writers (no Textual)."""
