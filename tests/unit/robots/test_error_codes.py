"""Every error code the gateway and the codec can send is in ``P.ERROR_CODES`` and in docs/protocol.md,
so a client written from the document knows each one (found in the source, so a new code without an entry
fails here)."""

from __future__ import annotations

import re
from pathlib import Path

from fleetrl.robots import protocol as P

ROOT = Path(__file__).resolve().parents[3]
# ProtocolError("code", ...), refuse(ident, "code", ...), _refuse(...), code="..." in Error(...)
PATTERNS = (
    r'ProtocolError\(\s*"([a-z_]+)"',
    r'refuse\(\s*[\w.]+(?:\s*or\s*\w+)?,\s*"([a-z_]+)"',
    r'_refuse_for_good\(\s*\w+,\s*\w+,\s*[\w.]+,\s*"([a-z_]+)"',
    r'code\s*=\s*"([a-z_]+)"',
)


def codes_in_source() -> set[str]:
    found: set[str] = set()
    for path in list((ROOT / "fleetrl" / "workers" / "gateway").glob("*.py")) + list(
        (ROOT / "fleetrl" / "robots" / "protocol").glob("*.py")
    ):
        text = path.read_text()
        for pattern in PATTERNS:
            found |= set(re.findall(pattern, text))
    return found


def test_every_code_sent_is_listed_and_documented():
    sent = codes_in_source()
    assert {"bad_frame", "unknown_session", "episode_too_long", "out_of_order"} <= sent  # the scan works
    assert sent <= set(P.ERROR_CODES), sorted(sent - set(P.ERROR_CODES))
    doc = (ROOT / "docs" / "protocol.md").read_text()
    missing = [code for code in P.ERROR_CODES if f"| `{code}` |" not in doc]
    assert not missing, f"docs/protocol.md has no row for {missing}"
    assert set(P.EPISODE_REFUSALS) <= set(P.ERROR_CODES)
