"""Who is using this dashboard session, and whether they must sign in first.

`current_user()` answers the signed-in user (Streamlit's st.login / OIDC) or "local"; run ownership and per-user
fair-use limits key on it. Sign-in is off by default (one local user, `make run` on 127.0.0.1); CONVLENS_AUTH=required
makes app.py show only a sign-in page to a signed-out browser, with the OIDC provider configured in
`.streamlit/secrets.toml` ([auth]: redirect_uri, cookie_secret, client_id, client_secret, server_metadata_url) and
Authlib installed (`pip install convlens[auth]`). Nothing here trusts a browser-supplied header.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from accel import settings
from accel.settings import SettingError

LOCAL_USER = "local"
AUTH_MODES = ("off", "required")


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


def auth_mode() -> str:
    """CONVLENS_AUTH: "off" or "required"; anything else is a SettingError naming the variable."""
    raw = str(settings.get("CONVLENS_AUTH") or "off").strip().lower()
    if raw not in AUTH_MODES:
        raise SettingError(f"CONVLENS_AUTH={raw!r} is not a sign-in mode; set it to off or required")
    return raw


def auth_required() -> bool:
    """Whether every browser must sign in before it sees anything."""
    return auth_mode() == "required"


def signed_in() -> bool:
    """Whether this browser session carries a signed-in identity (Streamlit's identity cookie)."""
    try:
        return bool(getattr(st.user, "is_logged_in", False))
    except Exception:  # noqa: BLE001 - st.user unavailable (no script run context)
        return False


def admins() -> set[str]:
    """The users listed in CONVLENS_ADMINS (lower-cased e-mails)."""
    return {a.strip().lower() for a in str(settings.get("CONVLENS_ADMINS") or "").split(",") if a.strip()}


def is_admin(user: str | None = None) -> bool:
    """Whether `user` (default: this session's) may run server-wide work such as the bench: everyone in single-user
    mode, only the CONVLENS_ADMINS when sign-in is required."""
    if not auth_required():
        return True
    who = (user or current_user()).strip().lower()
    return who != LOCAL_USER and who in admins()


def may_run_bench() -> tuple[bool, str]:
    """(allowed, reason when not): the quick bench pins every core for minutes and writes a server-wide report."""
    if is_admin():
        return True, ""
    return False, (
        "The quick bench occupies every core of the server for minutes and its report is shared by everyone, so "
        "on a server with sign-in only administrators (CONVLENS_ADMINS) may start it."
    )


def _provider() -> tuple[str | None, str]:
    """(provider name for st.login, problem) from the [auth] section of the secrets; problem "" when usable."""
    try:
        section: Any = st.secrets.get("auth")
    except Exception:  # noqa: BLE001 - no secrets file at all, or an unreadable one
        section = None
    if not section:
        return None, "the [auth] section of .streamlit/secrets.toml is missing"
    missing = [k for k in ("redirect_uri", "cookie_secret") if not section.get(k)]
    if missing:
        return None, f"[auth] in .streamlit/secrets.toml lacks {', '.join(missing)}"
    if section.get("client_id"):
        return None, ""
    named = [k for k, v in section.items() if hasattr(v, "get") and v.get("client_id")]
    if len(named) == 1:
        return str(named[0]), ""
    return (
        None,
        "[auth] in .streamlit/secrets.toml names no OIDC provider (client_id, client_secret, server_metadata_url)",
    )


def sign_in_page() -> None:
    """The only thing a signed-out browser sees when sign-in is required: a title, one sentence and the button."""
    st.title("convlens: sign in")
    st.write("This convlens dashboard is shared; sign in to use it.")
    provider, problem = _provider()
    if problem:
        st.error(
            f"Sign-in is required on this server but not configured: {problem}. An administrator sets it up."
        )
        return
    try:
        import authlib  # noqa: F401
    except ImportError:
        st.error("Sign-in needs Authlib on the server: pip install 'convlens[auth]'.")
        return
    if st.button("Sign in", type="primary", key="_signin", icon=":material/login:"):
        st.login(provider) if provider else st.login()


def require_sign_in() -> None:
    """Stop the script run with the sign-in page when sign-in is required and this browser is signed out (before
    any page, sidebar or shared run is drawn). A malformed CONVLENS_AUTH blocks everyone with its message."""
    try:
        required = auth_required()
    except SettingError as e:
        st.title("convlens")
        st.error(str(e))
        st.stop()
    if required and not signed_in():
        sign_in_page()
        st.stop()


def account_box() -> None:
    """In the sidebar: who is signed in, and a sign-out button (nothing in single-user mode)."""
    if not signed_in():
        return
    st.sidebar.caption("signed in as")
    st.sidebar.text(current_user())
    if st.sidebar.button("Sign out", key="_signout", icon=":material/logout:"):
        st.logout()
