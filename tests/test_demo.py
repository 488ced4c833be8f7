"""`smsroute demo` runs anywhere and tells the story of an outage."""

from __future__ import annotations

import re
import subprocess
import sys


def test_five_second_demo_shows_the_outage_failover_and_the_recovery() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "smsroute", "demo", "--duration", "5", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = done.stdout
    assert "What happened" in out
    rows = {m[1]: m[2] for m in re.finditer(r"^ (\S.*?)\s{2,}(\S.*?)\s*$", out, re.M)}
    # During the outage no German message went through Twilio, and none was lost.
    assert rows["DE traffic, Twilio down for DE"].startswith("twilio 0,")
    assert rows["messages"].endswith(" 0 failed")
    assert "twilio -> " in rows["failovers"]
    assert "breaker twilio[DE]: closed -> open" in out
    assert "breaker twilio[DE]: half_open -> closed" in out  # recovered
    assert not rows["DE traffic, after recovery"].startswith("twilio 0,")
    assert done.stderr == ""
