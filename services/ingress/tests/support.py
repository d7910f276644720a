"""What the ingress tests share besides fixtures: the fixed clock of every app they build,
and when the platform certificates made for them start being valid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

#: The fixed "now" of every app built here; notifications are signed at this time.
NOW = 1_763_780_000
#: Platform certificates made here are valid from the day before NOW.
CERT_START = datetime.fromtimestamp(NOW, UTC) - timedelta(days=1)
