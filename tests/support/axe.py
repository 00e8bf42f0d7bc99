"""axe-core in headless Chromium: the accessibility rules a page must pass (WCAG 2.2 AA)."""

from __future__ import annotations

import pytest

from support.paths import ROOT
from support.processes import require

AXE = ROOT / ".tools" / "node_modules" / "axe-core" / "axe.min.js"  # scripts/bootstrap.sh
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]


@pytest.fixture(scope="module")
def axe_source() -> str:
    require(AXE.exists(), f"axe-core ({AXE.relative_to(ROOT)})")
    return AXE.read_text(encoding="utf-8")


def serious_violations(page, axe_source: str) -> list[str]:
    # The page's CSP forbids injected scripts; the context bypasses it for axe only.
    page.add_script_tag(content=axe_source)
    result = page.evaluate(
        "tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})", AXE_TAGS
    )
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
