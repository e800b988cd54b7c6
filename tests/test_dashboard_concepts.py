"""The Concepts page (issue 20), in Streamlit's AppTest on the planted-concept model: a small TCAV run in the
background whose table holds exactly `accel.run`'s numbers (the stamp significant for Shirt), a discovery whose
concepts are browsable and whose concept is mapped on the image, links that reopen the runs and restore the page,
and bad concept uploads refused with the engine's reason."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import accel
from accel.methods.concepts.sets import PLANTED_CLASS, stamped_fashion
from tests.apptest import APP, open_page, private_store, wait_jobs
from tests.apptest import ok as _ok

__all__ = ["private_store"]  # autouse: this module's runs go to a store of its own

PAGE = "views/concepts.py"
SMALL_TCAV = {"runs": 8, "set_size": 20, "per_class": 20}
SMALL_DISC = {"limit": 400, "k": 4, "crops": 4, "top": 5, "importance_images": 6, "batch_size": 200}


def _wait(at: Any, timeout: float = 240.0) -> None:
    wait_jobs(at, "concept", timeout)


def _page(**query: str) -> Any:
    return open_page(PAGE, "fashion_planted", **query)


def _button(at: Any, label: str) -> Any:
    return next(b for b in at.button if b.label == label)


@pytest.fixture(scope="module")
def tcav_page() -> Any:
    """The TCAV section after a small run: the stamp and random sets, Shirt and T-shirt, the last conv layer."""
    at = _page()
    assert at.radio(key="con_section").value == "tcav"
    assert at.multiselect(key="con_concepts").value == ["stamp", "random"]
    at.multiselect(key="con_classes").set_value([PLANTED_CLASS, 0])
    at.multiselect(key="con.tcav.layers").set_value(["features.19"])
    at.slider(key="con.tcav.runs").set_value(SMALL_TCAV["runs"])
    at.number_input(key="con.tcav.set_size").set_value(SMALL_TCAV["set_size"])
    at.number_input(key="con.tcav.per_class").set_value(SMALL_TCAV["per_class"])
    _button(at, "Run TCAV").click().run()
    _wait(at)
    _ok(at)
    return at


def test_tcav_table_equals_accel_run(tcav_page: Any) -> None:
    at = tcav_page
    job = at.session_state["_jobs"]["con:tcav"]
    assert job.params["concepts"] == "stamp,random" and job.params["classes"] == f"0,{PLANTED_CLASS}"
    ref = accel.run("tcav", accel.load("fashion_planted"), None, **job.params)
    frame = at.dataframe[0].value
    assert len(frame) == len(ref.extras["table"]) == 4
    for shown, r in zip(frame.to_dict("records"), ref.extras["table"], strict=True):
        assert shown["concept"] == r["concept"] and shown["layer"] == r["layer"]
        assert shown["class"].startswith(f"{r['class']}:")
        for col, k in (
            ("TCAV", "score"),
            ("± std", "std"),
            ("random", "random"),
            ("p (Bonferroni)", "p_adj"),
        ):
            assert shown[col] == pytest.approx(r[k], abs=1e-12), (col, shown, r)
        assert shown["CAV accuracy"] == pytest.approx(r["acc"], abs=1e-12)
        assert shown["significant"] == ("yes" if r["significant"] else "no")
    shirt = next(r for r in ref.extras["table"] if r["concept"] == "stamp" and r["class"] == PLANTED_CLASS)
    assert shirt["score"] >= 0.9
    chart = at.get("plotly_chart")
    assert chart, "no TCAV bar chart"
    # the URL carries the page's state
    q = at.query_params
    assert q["section"] == "tcav" and q["concepts"] == "stamp,random"
    assert q["p.tcav.layers"] == "features.19" and q["p.tcav.runs"] == str(SMALL_TCAV["runs"])


def test_tcav_run_reopens_by_link_and_the_link_restores_the_form(tcav_page: Any) -> None:
    from streamlit.testing.v1 import AppTest

    job = tcav_page.session_state["_jobs"]["con:tcav"]
    link = AppTest.from_file(APP, default_timeout=240)
    link.query_params["run"] = job.run_id
    link.run()
    _ok(link)
    frame = link.dataframe[0].value
    assert list(frame["TCAV"]) == [r["score"] for r in job.result.extras["table"]]
    assert link.get("plotly_chart")
    # the page's own URL state restores its form
    q = dict(tcav_page.query_params.items())
    again = _page(**q)
    assert again.multiselect(key="con.tcav.layers").value == ["features.19"]
    assert again.multiselect(key="con_classes").value == [0, PLANTED_CLASS]
    assert again.slider(key="con.tcav.runs").value == SMALL_TCAV["runs"]
    assert again.number_input(key="con.tcav.set_size").value == SMALL_TCAV["set_size"]


def test_discovery_browses_concepts_and_maps_one() -> None:
    at = _page(section="discover")
    assert at.selectbox(key="con.discover.target").value == PLANTED_CLASS  # Shirt, the planted class
    for name, v in SMALL_DISC.items():
        w = at.get("slider") + at.get("number_input")
        next(x for x in w if x.key == f"con.discover.{name}").set_value(v)
    assert at.toggle(key="con_disc_stamped").value  # on stamped test Shirts, where the stamp is to be found
    _button(at, "Discover concepts").click().run()
    _wait(at)
    _ok(at)
    res = at.session_state["_jobs"]["con:discover"].result
    assert res.data.shape[:2] == (4, 5) and res.extras["maps"].shape == (4, 28, 28)
    _imgs, _labels, boxes = stamped_fashion("test", 200, seed=123)
    held = [
        a <= boxes[int(Path(i).stem), 0]
        and b <= boxes[int(Path(i).stem), 1]
        and c >= boxes[int(Path(i).stem), 2]
        and d >= boxes[int(Path(i).stem), 3]
        for i, (a, b, c, d) in zip(res.extras["top_ids"][0], res.extras["top_boxes"][0].tolist(), strict=True)
    ]
    assert sum(held) >= 4, held  # the most important concept's top crops hold the whole stamp
    pick = at.selectbox(key="con_discover_view_concept")
    assert len(pick.options) == 4 and at.get("plotly_chart")
    pick.set_value(2).run()
    _ok(at)
    captions = " ".join(c for im in at.get("image") for c in im.captions)
    assert "concept 2: its 5 crops" in captions and "concept 2 on the image" in captions
    # the stored discovery reopens by its link, browsable the same way
    from streamlit.testing.v1 import AppTest

    link = AppTest.from_file(APP, default_timeout=240)
    link.query_params["run"] = at.session_state["_jobs"]["con:discover"].run_id
    link.run()
    _ok(link)
    assert len(link.selectbox(key="shared_con_concept").options) == 4 and link.get("plotly_chart")
    # the concept map section draws a discovered concept on the (stamped) sidebar image
    at.radio(key="con_section").set_value("map").run()
    at.radio(key="con_map_kind").set_value("discovered").run()
    at.selectbox(key="con_map_index").set_value(0).run()
    _button(at, "Draw the concept map").click().run()
    _wait(at)
    _ok(at)
    cmap = at.session_state["_jobs"]["con:map"].result
    assert cmap.kind == "map" and cmap.data.shape == (28, 28)
    np.testing.assert_allclose(cmap.extras["direction"], res.extras["basis"][0], rtol=1e-6)
    # and the stamp set's CAV on the stamped image peaks inside the stamp the page put there
    at.radio(key="con_map_kind").set_value("set").run()
    assert at.selectbox(key="con_map_set").value == "stamp"
    _button(at, "Draw the concept map").click().run()
    _wait(at)
    _ok(at)
    cav = at.session_state["_jobs"]["con:map"].result
    top, left = divmod(int(np.argmax(cav.data)), 28)
    assert cav.meta["source"].startswith("packaged: stamp") and 4 <= top < 10 and 16 <= left < 22, (top, left)


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _png(seed: int, side: int = 28) -> bytes:
    a = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


BAD_ZIPS = {
    "one.zip": ({"one/a.png": _png(0)}, "needs at least 5"),
    "text.zip": ({"notes/a.txt": b"hello"}, "holds no images"),
    "mixed.zip": ({f"mixed/{i}.png": _png(i, 28 + (i % 2) * 4) for i in range(6)}, "mixes image sizes"),
    "broken.zip": (None, "not a readable .zip"),
}


def test_concept_zips_bad_ones_refused_with_the_engines_reason_a_good_one_joins() -> None:
    at = _page()
    ups = [
        (n, _zip(f) if f else b"PK\x03\x04 not really", "application/zip") for n, (f, _) in BAD_ZIPS.items()
    ]
    ups.append(("my dots.zip", _zip({f"dots/{i}.png": _png(i) for i in range(6)}), "application/zip"))
    at.file_uploader(key="con_upload").set_value(ups).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == len(BAD_ZIPS), errors
    for (name, (_, words)), msg in zip(BAD_ZIPS.items(), errors, strict=True):
        assert words in msg and name in msg, msg
        assert "/tmp" not in msg and "session-" not in msg  # the user's file name, never the server folder
    chosen = at.multiselect(key="con_concepts")
    assert chosen.value[:2] == ["stamp", "random"] and len(chosen.value) == 3
    assert "upload: my dots.zip" in chosen.options and not any(n in str(chosen.options) for n in BAD_ZIPS)


def test_stop_ends_a_tcav_run_early() -> None:
    at = _page(**{"p.tcav.per_class": "1000", "p.tcav.layers": "features.19", "p.tcav.set_size": "10"})
    _button(at, "Run TCAV").click().run()
    job = at.session_state["_jobs"]["con:tcav"]
    assert job.running
    at.button(key="con:tcav_stop").click().run()
    _wait(at)
    assert job.stop_event.is_set() and job.state in ("error", "stopped")
    if job.state == "error":  # stopped before any class input was scored: the engine says so
        assert "before any class input was scored" in " ".join(e.value for e in at.error)
    else:  # stopped while scoring: the partial table, marked as such
        assert job.result.meta["stopped"] and "stopped before the end" in " ".join(
            w.value for w in at.warning
        )
