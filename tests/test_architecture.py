"""The pure core takes `now` as an argument: no stage that decides reads the clock.
(Which modules may import what is checked by import-linter in CI; see pyproject.toml.)"""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT

PURE = ["models", "errors", "timeutil", "policy", "parse", "normalize", "dedupe", "render"]
CLOCK = re.compile(r"\b(datetime\.now|datetime\.utcnow|date\.today|time\.time|time\.monotonic)\s*\(")


@pytest.mark.parametrize("module", PURE)
def test_pure_module_never_reads_the_clock(module: str) -> None:
    source = (ROOT / "feeds" / f"{module}.py").read_text()
    assert not CLOCK.findall(source), f"feeds/{module}.py reads the clock; take `now` as an argument"
