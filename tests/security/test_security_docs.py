"""docs/security.md states each legacy stack's policy in the words of fieldhub/broker/legacy.py,
so what operators read is what the broker enforces (and what the legacy tests hold it to)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldhub.broker.legacy import LEGACY_POLICIES, LegacyPolicy

DOC = Path(__file__).parents[2] / "docs" / "security.md"


@pytest.mark.parametrize("policy", LEGACY_POLICIES.values(), ids=lambda p: p.name)
def test_the_docs_say_what_each_legacy_stack_can_and_cannot_spoof(policy: LegacyPolicy) -> None:
    text = " ".join(DOC.read_text().split())
    assert f"**{policy.name}** can: {policy.can_spoof}" in text
    assert f"Cannot: {policy.cannot_spoof}" in text
    for topic in (*policy.publish, *policy.read):
        shown = topic.replace("sensor/%c/temperature", "sensor/%c/{temperature,humidity,audio}")
        assert f"`{shown}`" in text or topic.startswith("sensor/%c/"), topic
