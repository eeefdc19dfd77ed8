"""Key shapes: the patterns the Lua scripts fill in name the same keys as `Keys` itself."""

from __future__ import annotations

import pytest

from monitor.store.keys import HOUR, MINUTE, Keys


@pytest.mark.parametrize(
    ("prefix", "model_id", "version"),
    [
        ("aimon", "credit", "1"),
        ("t%s", "100%d-sure", "v%2"),  # '%' in any part must come through as itself
        ("x", "a:b{c}", "!access"),
    ],
)
def test_the_scripts_patterns_name_the_same_keys(prefix: str, model_id: str, version: str) -> None:
    keys = Keys(prefix)
    for resolution in (MINUTE, HOUR):
        pattern = keys.bucket_pattern(model_id, resolution)
        assert pattern % (version, 1_700_000_040) == keys.bucket(model_id, version, resolution, 1_700_000_040)
    assert keys.join_pattern(model_id) % (1_699_920_000, 7) == keys.join(model_id, 1_699_920_000, 7)
    assert keys.join(model_id, 1_699_920_000, 7) == f"{prefix}:{{{model_id}}}:join:1699920000:7"
