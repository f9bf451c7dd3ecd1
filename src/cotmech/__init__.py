"""cotmech: a mechanistic study of chain-of-thought reasoning, after Dutta et al. (TMLR 2024)."""

__version__ = "0.1.0"
