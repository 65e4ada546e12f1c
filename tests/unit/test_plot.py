"""`memcoord plot`: the daemon's timeline drawn to a valid PNG with the expected series; the lab draws the same way."""

from __future__ import annotations
