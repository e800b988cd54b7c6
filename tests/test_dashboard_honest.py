"""Dashboard pages do what they say (AppTest): techniques a backbone cannot run are disabled with the reason and a
one-click switch, derived from their declaration; companion pictures (fast style's peer) and what a map explains
(target, probability, layer, colour bar) reach the page, the shared run and the HTML export; the layer map's
input-size line and the sanity chart are drawn in the right units; defaults that show something; readable tables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
UPLOAD = "(upload a checkpoint or .onnx)"


@pytest.fixture(scope="module", autouse=True)
def private_store(tmp_path_factory: pytest.TempPathFactory):
    """A private run store for this module's runs."""
    old = os.environ.get("CONVLENS_STORE")
    os.environ["CONVLENS_STORE"] = str(tmp_path_factory.mktemp("store"))
    yield
    if old is None:
        os.environ.pop("CONVLENS_STORE", None)
    else:
        os.environ["CONVLENS_STORE"] = old


def _app(page: str | None = None, **state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=240)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    return at


def _same_page(at):
    """Rerun as the same page (what a widget interaction does in a browser; see test_dashboard._home_rerun)."""
    at._finished_page_script_hash = ""
    at._page_hash = ""
    return at.run()


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _texts(at) -> str:
    parts = [str(x.value) for x in (*at.markdown, *at.caption, *at.info, *at.warning, *at.success)]
    parts += [c for im in at.get("image") for c in im.captions]
    return "\n".join(parts)


def _buttons(at, prefix: str) -> list:
    return [b for b in at.button if str(b.label).startswith(prefix)]


# ---------------------------------------------------------------------------------------------------- honest pages


def test_style_page_disables_gatys_on_a_backbone_without_vgg_layers() -> None:
    at = _app("style")
    _ok(at)
    warn = " ".join(w.value for w in at.warning)
    assert "style_transfer needs VGG" in warn and "disabled" in warn
    assert "sty_style_transfer_style_transfer_form" not in str(at.main)  # no form to start it on efficientnet
    switch = _buttons(at, "Switch the backbone to vgg19")
    assert len(switch) == 1
    switch[0].click().run()
    assert at.session_state["model"] == "vgg19"


@pytest.fixture(scope="module")
def fashion_onnx(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from accel.runtime.export import export_backbone
    from tests.conftest import get_net

    out = tmp_path_factory.mktemp("onnx") / "fashion_cnn.onnx"
    return export_backbone(get_net("fashion_cnn"), ["logits"], out=out).read_bytes()


def test_compare_on_an_onnx_upload_offers_no_gradient_method(fashion_onnx: bytes) -> None:
    import accel

    at = _app("compare")
    _ok(at)
    grad = {s.name for s in accel.list_methods() if s.page == "compare" and s.needs_grad}
    chosen = at.multiselect(key="cmp_methods").value
    assert grad & set(chosen)  # efficientnet: gradient methods are featured
    at.session_state["model"] = UPLOAD
    _same_page(at)
    at.sidebar.file_uploader[0].set_value(("mine.onnx", fashion_onnx, "application/octet-stream"))
    _same_page(at)
    at.session_state["cmp_methods"] = [*chosen, "occlusion"]  # the choice made on the previous backbone
    at.switch_page("views/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    ms = at.multiselect(key="cmp_methods")
    assert not grad & set(ms.value) and not grad & set(ms.options), ms.value
    warn = " ".join(w.value for w in at.warning)
    assert "gradients through a PyTorch module" in warn and "disabled" in warn
    switch = _buttons(at, "Switch the backbone to efficientnet_lite0")
    assert switch
    assert ms.value == ["occlusion"]  # what still runs is kept
    at.number_input(key="cmp.occlusion.window").set_value(
        40
    )  # too large for 28x28: a message naming the file
    at.button(key="FormSubmitter:cmp_form-Run").click().run()
    errs = " ".join(e.value for e in at.error)
    assert "mine.onnx" in errs and "upload-" not in errs, errs
    at.number_input(key="cmp.occlusion.window").set_value(7)
    at.button(key="FormSubmitter:cmp_form-Run").click().run()
    _ok(at)
    assert "**occlusion**" in _texts(at)
    _buttons(at, "Switch the backbone to efficientnet_lite0")[0].click().run()
    assert at.session_state["model"] == "efficientnet_lite0"
