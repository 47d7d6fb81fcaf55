"""Converter placeholder: filled in by the dataset-manifests work (issue 3)."""
