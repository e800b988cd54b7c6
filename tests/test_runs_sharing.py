"""Runs a team can share (issue 17 items 2 and 4): owners and private runs enforced by the store itself, the Runs
page listing your runs and the ones shared with you, links as capabilities, actions on run ids (the delete race),
and user text shown as literal text on the Runs page, the shared-run view and in exports.

Users are real identities through the one path the app reads, `st.user` (AppTest.user, as a signed-in browser
session would carry it), or the store API with an explicit acting user; nothing here bypasses `current_user()`."""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from accel.result import Result
from accel.store import RunStore, StoreError

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
A, B = "alice@example.test", "bob@example.test"
EVIL = "![x](http://127.0.0.1:9/x.png) <img src=http://127.0.0.1:9/y> [link](http://x)"


def _result(i: int = 0) -> Result:
    rng = np.random.default_rng(i)
    img = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    return Result("map", rng.random((24, 24)).astype(np.float32), {"wall_s": 0.1, "backend": "torch"}, img)


def _put(store: RunStore, owner: str, i: int = 0, **kw) -> str:
    kw.setdefault("title", f"{owner} run {i}")
    return store.put(
        _result(i), model="m", method="saliency", params={"i": i}, image_key=None, owner=owner, **kw
    )


@pytest.fixture()
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "store")


# ---------------------------------------------------------------------------------------------------- the store API


def test_private_runs_of_others_cannot_be_listed_opened_or_deleted(store: RunStore) -> None:
    a_priv = _put(store, A, 0, private=True, key="k0")
    a_link = _put(store, A, 1, key="k1")
    b_own = _put(store, B, 2)
    assert {r.id for r in store.list(user=A)} == {a_priv, a_link}
    assert [r.id for r in store.list(user=B)] == [b_own]  # nothing of A's until B opens a link
    assert store.count(user=B) == 1 and store.facets(user=B) == {"method": ["saliency"], "model": ["m"]}
    # open by link: a shared run opens for anyone holding its id, a private one exactly like a missing one
    assert store.get(a_link, user=B).owner == A
    with pytest.raises(StoreError) as private:
        store.get(a_priv, user=B)
    with pytest.raises(StoreError) as missing:
        store.get("0123456789abcdef", user=B)
    assert str(private.value).replace(a_priv, "ID") == str(missing.value).replace("0123456789abcdef", "ID")
    for call in (
        lambda: store.export_html([a_priv], user=B),
        lambda: store.export_zip([a_link, a_priv], user=B),
        lambda: store.mark_seen(a_priv, user=B),
    ):
        with pytest.raises(StoreError, match="that you can open"):
            call()
    assert store.lookup("k0", user=B) is None and store.lookup("k1", user=B) == a_link
    assert store.lookup("k0", user=A) == a_priv
    # only the owner deletes or changes privacy; B's attempts change nothing
    assert store.delete(a_priv, user=B) is False  # invisible to B: same as no such run
    with pytest.raises(StoreError, match="only its owner can delete it"):
        store.delete(a_link, user=B)
    with pytest.raises(StoreError, match="only its owner can change who may open it"):
        store.set_private(a_link, True, user=B)
    with pytest.raises(StoreError, match="that you can open"):
        store.set_private(a_priv, False, user=B)
    assert store.count() == 3 and store.get(a_priv).private and not store.get(a_link).private
    # "shared with you" = others' runs you opened by their link, while they stay shared
    store.mark_seen(a_link, user=B)
    assert {r.id for r in store.list(user=B)} == {a_link, b_own}
    store.set_private(a_link, True, user=A)
    assert [r.id for r in store.list(user=B)] == [b_own]
    with pytest.raises(StoreError):
        store.get(a_link, user=B)
    assert json.loads((store.runs_dir / a_link / "manifest.json").read_text())["private"] is True
    store.set_private(a_link, False, user=A)
    assert [r.id for r in store.list(user=B)] == [b_own]  # making it private forgot who had opened it
    assert store.delete(a_link, user=A) and not (store.runs_dir / a_link).exists()
    assert store.count(user=None) == 2  # the operator (CLI) sees every run


def test_acting_user_must_be_a_name(store: RunStore) -> None:
    rid = _put(store, A)
    for bad in ("", "   ", 3):
        with pytest.raises(ValueError, match="acting user must be a non-empty string"):
            store.list(user=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="acting user must be a non-empty string"):
            store.delete(rid, user=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mark_seen needs the user"):
        store.mark_seen(rid, user=None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- the dashboard


def _session(monkeypatch, root: Path, user: str | None, *, page: str | None = "runs", run: str | None = None):
    """One browser session: signed in as `user` (st.user, as Streamlit's OIDC cookie provides it) or, with None,
    the single local user."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CONVLENS_STORE", str(root))
    at = AppTest.from_file(APP, default_timeout=240)
    if user is not None:
        at.user = {"is_logged_in": True, "email": user}
    if run is not None:
        at.query_params["run"] = run
    at.run()
    if page and run is None:
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _ids(at) -> list[str]:
    return list(at.dataframe[0].value["id"]) if at.dataframe else []


def _tick(at, *run_ids: str) -> None:
    """Tick rows of the Runs table (what a click on their checkboxes does) and rerun."""
    ids = _ids(at)
    at.session_state[at.dataframe[0].key] = {
        "selection": {"rows": [ids.index(i) for i in run_ids], "columns": []}
    }
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def _button(at, key: str):
    return next(b for b in at.button if b.key == key)


def test_runs_page_lists_own_and_shared_runs_per_signed_in_user(store: RunStore, monkeypatch) -> None:
    a_priv = _put(store, A, 0, private=True)
    a_link = _put(store, A, 1)
    b_own = _put(store, B, 2)
    at_b = _session(monkeypatch, store.root, B)
    assert _ids(at_b) == [b_own]
    assert "1 run(s)" in at_b.caption[0].value
    # B opens A's private run by its link: refused like a missing run, nothing of it shown
    at = _session(monkeypatch, store.root, B, run=a_priv)
    assert "that you can open" in at.error[0].value and f"{A} run 0" not in str(
        [s.value for s in at.subheader]
    )
    # B opens A's shared run by its link: it opens, and is listed for B as shared (owner named, not "you")
    at = _session(monkeypatch, store.root, B, run=a_link)
    assert not at.error and at.subheader[0].value == f"{A.replace('@', chr(92) + '@')} run 1"
    assert not [
        b for b in at.button if b.key in ("shared_private", "shared_share")
    ]  # no owner controls for B
    at_b.run()
    table = at_b.dataframe[0].value
    assert set(table["id"]) == {a_link, b_own}
    assert dict(zip(table["id"], table["owner"], strict=True)) == {a_link: A, b_own: "you"}
    # B ticks A's run: no delete or privacy action is offered for it
    _tick(at_b, a_link)
    assert _button(at_b, "runs_delete").disabled and _button(at_b, "runs_private").disabled
    # A sees both of their runs and owns the controls; making the shared one private removes it from B's list
    at_a = _session(monkeypatch, store.root, A)
    assert set(_ids(at_a)) == {a_priv, a_link}
    _tick(at_a, a_link)
    _button(at_a, "runs_private").click().run()
    assert not at_a.exception and "1 run(s) are now private" in at_a.info[0].value
    at_b.run()
    assert _ids(at_b) == [b_own]


def test_delete_acts_on_the_ticked_run_while_another_user_adds_one(store: RunStore, monkeypatch) -> None:
    """Two clients of one store, both the single local user (no sign-in, the default): session 1 ticks a run,
    client 2 stores a new run (it lands at the top of the newest-first list), session 1 presses Delete."""
    old = _put(store, "local", 0, title="old")
    mid = _put(store, "local", 1, title="mid")
    at = _session(monkeypatch, store.root, None)
    assert _ids(at) == [mid, old]
    _tick(at, old)  # row 1
    newer = _put(RunStore(store.root), "local", 2, title="landed meanwhile")  # the other client
    _button(at, "runs_delete").click().run()
    assert not at.exception and "Deleted 1 run(s)." in at.info[0].value
    assert {r.id for r in store.list()} == {mid, newer}  # exactly the ticked run is gone
    assert _ids(at) == [newer, mid]
    # a stale selection after someone else deleted a run: no IndexError, the ticks are dropped with a word
    _tick(at, mid)  # row 1 of [newer, mid]
    assert store.delete(newer)  # the other client
    at.run()
    assert not at.exception and _ids(at) == [mid]
    assert "selection was cleared" in " ".join(i.value for i in at.info)
    assert "0 selected" not in " ".join(c.value for c in at.caption)
    assert not [b for b in at.button if b.key == "runs_delete"]  # nothing ticked, nothing to delete


def test_exports_are_built_only_when_clicked(store: RunStore, monkeypatch) -> None:
    ids = [_put(store, "local", i) for i in range(3)]
    calls: list[str] = []
    real_html, real_zip = RunStore.export_html, RunStore.export_zip

    def counting_html(self, run_ids, **kw):  # a spy: counts, then runs the real export
        calls.append("html")
        return real_html(self, run_ids, **kw)

    def counting_zip(self, run_ids, **kw):
        calls.append("zip")
        return real_zip(self, run_ids, **kw)

    monkeypatch.setattr(RunStore, "export_html", counting_html)
    monkeypatch.setattr(RunStore, "export_zip", counting_zip)
    at = _session(monkeypatch, store.root, None)
    _tick(at, ids[0], ids[2])
    for _ in range(3):
        at.run()
    buttons = at.get("download_button")
    assert [b.proto.label for b in buttons] == [
        "Export 2 as HTML",
        "Export 2 as zip",
        "Export HTML",
        "Export zip",
    ]
    assert all(b.proto.deferred_file_id for b in buttons)  # the file is made on click, by the server
    assert calls == []  # four reruns with two runs selected built nothing


# ---------------------------------------------------------------------------------------------------- escaping


_MD_ELEMENTS = ("markdown", "caption", "subheader", "title", "info", "warning", "error", "success", "header")


def _markdown_values(at) -> list[str]:
    """Every value Streamlit renders as Markdown on the page (and in the sidebar)."""
    out = []
    for kind in _MD_ELEMENTS:
        out += [str(x.value) for x in at.get(kind)]
    out += [str(c) for im in at.get("image") for c in im.captions]
    return out


def _assert_literal(values: list[str]) -> None:
    """No Markdown image, link, HTML tag or autolink survives unescaped in any rendered value (the app's own
    links to a run, `[...](?run=<id>)`, are the only links allowed)."""
    for v in values:
        v = re.sub(r"\]\([^()\s]*\?run=[0-9a-f]{16}\)", "]", v)
        assert not re.search(r"(?<!\\)!(?<!\\)\[", v), v
        assert not re.search(r"(?<!\\)\]\(", v), v
        assert not re.search(r"(?<!\\)<img", v), v
        assert "http://127.0.0.1" not in v and "http://x" not in v, v


def test_a_shared_run_never_shows_server_paths_from_its_parameters(store: RunStore, monkeypatch) -> None:
    """Parameters that name an upload in the store or a folder on the server show as `$CONVLENS_STORE/...` or
    "(server path)" to whoever opens the link; the store keeps the real values."""
    secret = "/srv/private/team-x/concepts"
    upload = str(store.root / "uploads" / "abc123" / "stamp.zip")
    rid = store.put(
        _result(0), model="fashion_cnn", method="saliency", params={"concepts": [upload], "folder": secret},
        image_key=None, title="paths",
    )  # fmt: skip
    at = _session(monkeypatch, store.root, None, run=rid)
    shown = " ".join(j.proto.body for j in at.json)
    assert secret not in shown and str(store.root) not in shown, shown
    assert "$CONVLENS_STORE" in shown and "stamp.zip" in shown
    assert store.get(rid).params["folder"] == secret


def test_markdown_and_html_in_titles_show_as_literal_text(store: RunStore, monkeypatch) -> None:
    from dashboard.runview import _export_bytes
    from dashboard.session_store import SessionStore
    from dashboard.ui import escape_md

    rid = store.put(
        _result(0),
        model=f"resnet18@{EVIL}.pt",
        method="saliency",
        params={"label": EVIL, "target": 3},
        image_key=None,
        title=EVIL,
    )
    # the Runs page: the list (plain table cells), the thumbnails' captions, the opened run
    at = _session(monkeypatch, store.root, None)
    table = at.dataframe[0].value
    assert table["title"].tolist() == [EVIL]  # a table cell is plain text
    _assert_literal(_markdown_values(at))
    _tick(at, rid)
    values = _markdown_values(at)
    _assert_literal(values)
    assert escape_md(EVIL) in values  # the title, as literal text
    assert any(escape_md(f"resnet18@{EVIL}.pt") in v for v in values)
    # the shared-run view
    at = _session(monkeypatch, store.root, None, run=rid)
    assert not at.error
    assert at.subheader[0].value == escape_md(EVIL)
    assert at.subheader[0].value == (
        r"!\[x\](http\://127.0.0.1:9/x.png) \<img src=http\://127.0.0.1:9/y\> \[link\](http\://x)"
    )
    _assert_literal(_markdown_values(at))
    assert EVIL in " ".join(j.proto.body for j in at.json)  # parameters: a JSON viewer, text
    # the HTML export (what the deferred download builds): escaped, no fetch, no link, fetches forbidden anyway
    page = _export_bytes(SessionStore(store, "local"), (rid,), "html").decode()
    assert (
        "<img src=http" not in page
        and "href" not in page.lower()
        and "<img src="
        not in page.replace("<img alt='input' title='input' src='data:", "").replace(
            "<img alt='result' title='result' src='data:", ""
        )
    )
    assert page.count("<img ") == 3 and all(  # input, map, the map's colour bar
        src.startswith("data:image/png") for src in re.findall(r"src='([^']*)'", page)
    )
    assert "&lt;img src=http://127.0.0.1:9/y&gt;" in page and "default-src 'none'" in page
    z = zipfile.ZipFile(io.BytesIO(_export_bytes(SessionStore(store, "local"), (rid,), "zip")))
    assert json.loads(z.read("manifest.json"))["convlens_runs"][0]["title"] == EVIL  # data, never rendered


def test_escape_md_neutralises_every_construct_that_fetches_or_links() -> None:
    from dashboard.ui import escape_md

    cases = {
        "![a](http://h/i.png)": r"!\[a\](http\://h/i.png)",
        "<img src=x onerror=alert(1)>": r"\<img src=x onerror=alert(1)\>",
        "$\\href{http://h}{x}$": r"\$\\href{http\://h}{x}\$",
        ":red[alert] www.evil.test": r":red\[alert\] www\.evil.test",
        "mail me@evil.test": r"mail me\@evil.test",
        "# big\n\n- list": r"\# big - list",
        "photo_1 (copy).png": "photo_1 (copy).png",  # ordinary names stay readable
    }
    for raw, want in cases.items():
        assert escape_md(raw) == want, raw


# ---------------------------------------------------------------------------------------------------- a real browser


@pytest.mark.slow
def test_browser_shows_markdown_titles_literally_and_fetches_nothing(tmp_path: Path) -> None:
    """`streamlit run` + headless Chromium: a run whose title and model name hold a Markdown image, an <img> tag and
    a link to a local listener renders them as visible text on the shared view and the Runs page, and the browser
    never requests anything from the listener."""
    tb = pytest.importorskip("tests.test_browser")
    if not (tb.CHROMIUM and tb.DRIVER and tb.HAVE_SELENIUM):
        pytest.skip("headless Chromium and selenium are needed (apt-get install -y chromium chromium-driver)")
    import http.server
    import threading

    from selenium.webdriver.common.by import By

    hits: list[str] = []

    class Listener(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Listener)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    evil = (
        f"![x](http://127.0.0.1:{port}/md.png) <img src=http://127.0.0.1:{port}/tag.png> "
        f"[link](http://127.0.0.1:{port}/link)"
    )
    store = RunStore(tmp_path / "store")
    rid = store.put(
        _result(0), model=f"m {evil}", method="saliency", params={"label": evil}, image_key=None, title=evil
    )
    drv = tb.chrome(tmp_path / "chromium")
    try:
        with tb.serve(store.root, tmp_path) as url:
            for path in (f"/?run={rid}", "/runs"):
                drv.get(url + path)
                tb._settle(drv)
                tb._check_no_errors(drv, path)
                text = drv.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text
                assert f"![x](http://127.0.0.1:{port}/md.png)" in text, path  # shown, as typed
                for el in drv.find_elements(By.CSS_SELECTOR, "img, a, iframe, source, video, audio"):
                    for attr in ("src", "href", "srcset"):
                        assert f"127.0.0.1:{port}" not in (el.get_attribute(attr) or ""), (path, attr)
            time.sleep(2.0)  # anything lazy would have fired by now
    finally:
        drv.quit()
        srv.shutdown()
    assert hits == [], hits
