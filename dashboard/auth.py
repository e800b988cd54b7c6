"""Who is using this dashboard session: the signed-in user (Streamlit's st.login / OIDC) or "local".

Run ownership, private runs and per-user fair-use limits key on `current_user()`. Sign-in itself (required or not,
the sign-in page) is configured in app.py; this module only answers the question.
"""

from __future__ import annotations

import streamlit as st

LOCAL_USER = "local"


def current_user() -> str:
    """The signed-in user's e-mail (or subject) when sign-in is in use, else "local" (single-user mode)."""
    try:
        user = st.user
        if getattr(user, "is_logged_in", False):
            for key in ("email", "sub", "preferred_username", "name"):
                value = user.get(key) if hasattr(user, "get") else None
                if value:
                    return str(value)
    except Exception:  # noqa: BLE001 - no auth configured: st.user is empty or absent
        pass
    return LOCAL_USER
