"""Evaluation on LoCoMo: loading, evidence normalisation, ingestion through the memory layer, recall@k."""
