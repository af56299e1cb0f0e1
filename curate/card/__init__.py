"""Dataset cards (README.md with plots) and publishing a dataset folder to the Hugging Face hub."""

from curate.card.card import build_card, key_figures, write_card

__all__ = ["build_card", "key_figures", "write_card"]
