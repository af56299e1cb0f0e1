"""Decontamination against held-out benchmarks: the operator (step), the bundled benchmark files
(benchmarks), n-gram sets of a batch (grams) and the benchmark index that matches them (match)."""
