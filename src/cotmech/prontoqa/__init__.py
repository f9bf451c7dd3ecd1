"""PrOntoQA task layer: generator, sentence parser, verifier, importers, prompts, subtasks and corruptions.

Entry points: :func:`generate` (records), :func:`cotmech.prontoqa.verify.verify`,
:func:`cotmech.prontoqa.importers.import_file`, :func:`cotmech.prontoqa.prompts.build_prompt`,
:func:`cotmech.prontoqa.subtasks.steps`, :func:`cotmech.prontoqa.corrupt.make_pair`.
"""
from __future__ import annotations

from .generator import generate

__all__ = ["generate"]
