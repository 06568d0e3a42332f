"""faust App options from RunLedger settings, as the broker tests use them.

They live in `services.roles.app` (the roles' host); this module re-exports them for
the integration tests that prove them (see services/roles/app.py for why each option
is explicit, and ``env={}``).
"""

from __future__ import annotations

from services.roles.app import faust_options

__all__ = ["faust_options"]
