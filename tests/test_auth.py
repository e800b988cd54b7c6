"""Sign-in (issue 17 item 1): off by default for one local user; with CONVLENS_AUTH=required a signed-out browser sees
only the sign-in page (no page, sidebar or shared run), a signed-in one the app. End to end offline: a local OIDC
provider (oidc-provider-mock) on 127.0.0.1, the real app served by `streamlit run`, headless Chromium signing in.
The quick bench is admin-only under sign-in (CONVLENS_ADMINS)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
AUTH = {
    "redirect_uri": "http://127.0.0.1:8501/oauth2callback",
    "cookie_secret": "x" * 48,
    "client_id": "convlens-test",
    "client_secret": "not-a-secret",
    "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration",
}


def _app(user: dict | None = None, *, secrets_auth: dict | None = AUTH, query: dict | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=240)
    if user is not None:
        at.user = user
    if secrets_auth is not None:
        at.secrets["auth"] = secrets_auth
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    return at


def _everything(at) -> str:
    parts = [str(x.value) for x in (*at.title, *at.markdown, *at.caption, *at.info, *at.warning, *at.error)]
    parts += [t.value for t in at.text] + [b.label for b in at.button]
    return "\n".join(parts)


def test_off_by_default_one_local_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVLENS_AUTH", raising=False)
    at = _app({"is_logged_in": False}, secrets_auth=None)
    assert not at.exception
    assert at.title[0].value == "convlens" and "Sign in" not in [b.label for b in at.button]
    assert len(at.sidebar.selectbox) >= 1  # the model picker


@pytest.mark.parametrize("query", [{}, {"run": "0123456789abcdef"}])
def test_required_signed_out_sees_only_the_sign_in_page(monkeypatch: pytest.MonkeyPatch, query: dict) -> None:
    monkeypatch.setenv("CONVLENS_AUTH", "required")
    at = _app({"is_logged_in": False}, query=query)
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["convlens: sign in"]
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.sidebar.children  # no sidebar: no model, image, store or runs
    assert not at.selectbox and not at.get("image") and not at.error
    assert "Backbone" not in _everything(at) and "run store" not in _everything(at).lower()


def test_required_without_configuration_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVLENS_AUTH", "required")
    at = _app({"is_logged_in": False}, secrets_auth=None)
    assert [e.value for e in at.error] == [
        "Sign-in is required on this server but not configured: the [auth] section of .streamlit/secrets.toml "
        "is missing. An administrator sets it up."
    ]
    assert not at.button and not at.selectbox


def test_malformed_setting_blocks_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVLENS_AUTH", "yes please")
    at = _app({"is_logged_in": True, "email": "a@example.com"})
    assert [e.value for e in at.error] == [
        "CONVLENS_AUTH='yes please' is not a sign-in mode; set it to off or required"
    ]
    assert not at.selectbox


def test_required_signed_in_sees_the_app_and_who_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVLENS_AUTH", "required")
    at = _app({"is_logged_in": True, "email": "alice@example.com", "name": "[Alice](http://evil.test)"})
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "convlens"
    assert "alice@example.com" in [t.value for t in at.sidebar.text]  # shown as text, never Markdown
    assert "Sign out" in [b.label for b in at.sidebar.button]


def test_quick_bench_is_for_admins_when_sign_in_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVLENS_AUTH", "required")
    monkeypatch.setenv("CONVLENS_ADMINS", "root@example.com, Boss@Example.com")
    for email, allowed in (("alice@example.com", False), ("boss@example.com", True)):
        at = _app({"is_logged_in": True, "email": email})
        at.switch_page("views/benchmarks.py").run()
        assert not at.exception, [e.value for e in at.exception]
        (btn,) = [b for b in at.button if b.key == "bench_run"]
        assert btn.disabled is (not allowed)
        text = re.sub(r"\\(.)", r"\1", _everything(at))
        assert ("only administrators (CONVLENS_ADMINS) may start it" in text) is (not allowed)
    monkeypatch.delenv("CONVLENS_AUTH")
    at = _app({"is_logged_in": False}, secrets_auth=None)
    at.switch_page("views/benchmarks.py").run()
    assert not [b for b in at.button if b.key == "bench_run"][
        0
    ].disabled  # single-user mode: the user is admin


# ---------------------------------------------------------------------------------------------------- browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
HAVE_PY = all(importlib.util.find_spec(m) is not None for m in ("selenium", "oidc_provider_mock", "authlib"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def oidc() -> Iterator[str]:
    """A local OpenID Connect provider on 127.0.0.1 (any client id/secret; the user types a subject)."""
    import warnings

    import werkzeug.serving

    # Authlib warns about its own modules when the provider imports them
    with warnings.catch_warnings():
        import authlib.deprecate  # noqa: F401 - it installs an "always" filter for its warnings when imported

        warnings.simplefilter("ignore", DeprecationWarning)
        from oidc_provider_mock import User, app

    provider = app(
        user_claims=[User(sub="alice@example.com", claims={"email": "alice@example.com", "name": "Alice"})]
    )
    server = werkzeug.serving.make_server("127.0.0.1", 0, provider, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@contextlib.contextmanager
def _serve_with_sign_in(oidc_url: str, tmp: Path) -> Iterator[str]:
    port = _free_port()
    secrets_file = tmp / "secrets.toml"
    secrets_file.write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_urlsafe(48)}"\n'
        'client_id = "convlens-test"\n'
        'client_secret = "not-a-secret"\n'
        f'server_metadata_url = "{oidc_url}/.well-known/openid-configuration"\n'
    )
    env = dict(os.environ)
    env.update(
        CONVLENS_AUTH="required",
        CONVLENS_STORE=str(tmp / "store"),
        CONVLENS_OFFLINE="1",
        CONVLENS_CACHE=env.get("CONVLENS_CACHE", str(ROOT / ".cache" / "convlens")),
        STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
    )
    log = open(tmp / "streamlit.log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            APP,
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.fileWatcherType",
            "none",
            "--secrets.files",
            str(secrets_file),
        ],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                pytest.fail(f"streamlit did not start:\n{log.read()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.seek(0)
        tail = log.read()[-4000:]
        log.close()
        if "Traceback" in tail:
            print(f"streamlit log tail:\n{tail}")


def _h1(drv) -> list[str]:
    from selenium.webdriver.common.by import By

    return [h.text for h in drv.find_elements(By.CSS_SELECTOR, "h1")]


def _wait(pred, timeout: float = 120.0, what: str = "") -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        with contextlib.suppress(Exception):
            if pred():
                return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _buttons(drv) -> list[str]:
    """The labels of the app's buttons (the text after a Material icon's name)."""
    from selenium.webdriver.common.by import By

    found = drv.find_elements(By.CSS_SELECTOR, '[data-testid="stButton"] button')
    return [b.text.strip().splitlines()[-1] for b in found if b.text.strip()]


def _click(drv, label: str) -> None:
    from selenium.webdriver.common.by import By

    for b in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stButton"] button'):
        if b.text.strip().splitlines()[-1:] == [label]:
            b.click()
            return
    raise AssertionError(f"no button {label!r}")


def _only_sign_in_page(drv) -> None:
    from selenium.webdriver.common.by import By

    from tests.test_browser import _settle

    _settle(drv)
    assert _h1(drv) == ["convlens: sign in"]
    assert not drv.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebar"]')
    assert _buttons(drv) == ["Sign in"]
    body = drv.find_element(By.TAG_NAME, "body").text
    assert "Backbone" not in body and "Compare" not in body and "Runs" not in body


@pytest.mark.slow
@pytest.mark.filterwarnings(
    "ignore:get_jwt_config:DeprecationWarning"
)  # inside the provider, per token request
@pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="headless Chromium is not installed (apt-get install -y chromium chromium-driver)",
)
@pytest.mark.skipif(
    not HAVE_PY,
    reason="needs selenium, Authlib and oidc-provider-mock (pip install selenium Authlib oidc-provider-mock)",
)
def test_browser_signs_in_through_a_local_oidc_provider(oidc: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from tests.test_browser import _settle, chrome

    with _serve_with_sign_in(oidc, tmp_path) as url:
        stranger = chrome(tmp_path / "profile-stranger")
        alice = chrome(tmp_path / "profile-alice")
        try:
            # signed out: the sign-in page, whatever the address (a page, a shared run link)
            for path in ("/", "/compare", "/runs", "/?run=0123456789abcdef"):
                stranger.get(url + path)
                _only_sign_in_page(stranger)
            # alice signs in at the provider and comes back to the app
            alice.get(url + "/")
            _only_sign_in_page(alice)
            _click(alice, "Sign in")
            _wait(lambda: alice.current_url.startswith(oidc), 60, "the provider's authorisation form")
            alice.find_element(By.CSS_SELECTOR, 'input[name="sub"]').send_keys("alice@example.com")
            next(b for b in alice.find_elements(By.CSS_SELECTOR, "button") if b.text == "Authorize").click()
            _wait(lambda: alice.current_url.startswith(url), 60, "the redirect back to the dashboard")
            _wait(lambda: "convlens" in _h1(alice), 240, "the home page after sign-in")
            _settle(alice)
            sidebar = alice.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text
            assert "alice@example.com" in sidebar and "Sign out" in sidebar and "Backbone" in sidebar
            assert not alice.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
            # her session does not open the door for anyone else
            stranger.get(url + "/")
            _only_sign_in_page(stranger)
            # signing out drops the app's identity cookie (and visits the provider's end-session page)
            _click(alice, "Sign out")
            _wait(lambda: alice.current_url.startswith(oidc), 60, "the provider's end-session page")
            alice.get(url + "/")
            _only_sign_in_page(alice)
        finally:
            stranger.quit()
            alice.quit()
