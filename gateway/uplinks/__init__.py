"""Uplinks: each delivers sealed batches to one destination and is the only importer of its client."""
