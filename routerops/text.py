"""Prompt identity: one hash function for the store, the embedding cache and the request log."""

from __future__ import annotations

import hashlib
import unicodedata


def normalize_prompt(text: str) -> str:
    # NFC and trimmed outer whitespace: the same prompt from two sources hashes the same.
    return unicodedata.normalize("NFC", text).strip()


def prompt_hash(text: str) -> str:
    """sha256 hex of the normalized prompt."""
    return hashlib.sha256(normalize_prompt(text).encode("utf-8")).hexdigest()
