"""Arguments the model benchmarks share (imported by the scripts next to it)."""
from __future__ import annotations

import argparse


def model_parser(doc: str | None, model: str = "random:tiny-llama", dtype: str = "float32",
                 device: str = "cpu") -> argparse.ArgumentParser:
    """A parser with the script's docstring and ``--model --dtype --device --threads``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=model)
    ap.add_argument("--dtype", default=dtype)
    ap.add_argument("--device", default=device)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return ap
