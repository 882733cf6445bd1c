"""The model alias map: one canonical name per model across sources."""

from __future__ import annotations

import pytest

from routerops.model_names import ModelCatalog, UnknownModelError, load_catalog, name_key, save_catalog


def test_spellings_across_sources_resolve_to_one_model():
    catalog = ModelCatalog.builtin()
    names = {catalog.resolve(n) for n in ["gpt4_1106_preview", "gpt-4-1106-preview", "openai/gpt-4-1106-preview"]}
    assert names == {"gpt-4-1106-preview"}
    assert catalog.resolve("mistralai/mixtral-8x7b-chat") == catalog.resolve("Mixtral-8x7B-Instruct-v0.1")


def test_prompt_variants_stay_distinct():
    catalog = ModelCatalog.builtin()
    assert catalog.canonicalize("gpt4_1106_preview_concise") != catalog.resolve("gpt4_1106_preview")
    assert name_key("Mixtral-8x7B-Instruct-v0.1_verbose") != name_key("Mixtral-8x7B-Instruct-v0.1")


def test_unknown_name_lists_known_ones():
    catalog = ModelCatalog()
    catalog.add("weak-model")
    catalog.add("strong-model")
    with pytest.raises(UnknownModelError) as err:
        catalog.resolve("other")
    assert "'other'" in str(err.value) and "strong-model, weak-model" in str(err.value)


def test_new_models_and_aliases_round_trip_through_the_database(settings):
    from routerops.db import session_scope

    with session_scope(settings) as session:
        catalog = load_catalog(session)
        canonical = catalog.canonicalize("acme/Widget-7B")
        catalog.canonicalize("widget_7b")
        save_catalog(session, catalog, only=[canonical])
    with session_scope(settings) as session:
        again = load_catalog(session)
    assert again.resolve("WIDGET-7B") == "acme/Widget-7B"
    assert "widget_7b" in again.aliases["acme/Widget-7B"]
