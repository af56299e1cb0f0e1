"""Duplicate removal: exact keys (exact), near duplicates by MinHash LSH (minhash), embeddings (semantic)."""
