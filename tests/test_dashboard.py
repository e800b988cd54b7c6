"""Dashboard (AppTest): every page opens with defaults, Compare runs selected methods, `?run=<id>` reopens a stored
run without recomputing, synthesis jobs show progress and stop, and bad uploads give clear messages."""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.apptest import wait_jobs

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
PAGES = (
    "compare",
    "dataset",
    "models",
    "evaluate",
    "concepts",
    "filters",
    "patches",
    "embeddings",
    "synthesis",
    "inversion",
    "style",
    "benchmarks",
    "runs",
)
CALLS: dict[str, int] = {}


# ---------------------------------------------------------------------------------------------------- fakes
# Small registered techniques with known outputs, so the dashboard is tested independently of the real methods
# (which appear on the same pages when they are registered).


@pytest.fixture(scope="module", autouse=True)
def store_and_fakes(tmp_path_factory: pytest.TempPathFactory):
    """A private run store and three test techniques (attribute, inspect, synthesize); removed afterwards."""
    import torch

    from accel.registry import _REGISTRY, LAYER, TARGET, param, register
    from accel.result import LossRecord, Result

    old_store = os.environ.get("CONVLENS_STORE")
    os.environ["CONVLENS_STORE"] = str(tmp_path_factory.mktemp("store"))

    @dataclass
    class GradP:
        target: int | None = TARGET(help="class index (default: the top-1 prediction)", min=None)
        power: float = param(1.0, "exponent applied to |gradient|", min=0.5, max=3.0)

    def grad(net, img, p, obs):
        CALLS["grad"] = CALLS.get("grad", 0) + 1
        x = net.preprocess(img).requires_grad_(True)
        y = net.logits(x)
        t = int(y.argmax()) if p.target is None else net.check_target(p.target)
        (g,) = torch.autograd.grad(y[0, t], x)
        m = g.abs().amax(1)[0].numpy().astype(np.float32) ** p.power
        obs.progress(1.0, "done")
        return Result("map", m, {"backend": "torch", "passes": 1, "target": t}, img)

    @dataclass
    class TileP:
        layer: str | None = LAYER(help="layer to show (default: the first)")
        tiles: int = param(4, "number of tiles", min=1, max=16)

    def tiles(net, img, p, obs):
        if p.layer is not None:
            net.layer(p.layer)
        a = np.zeros((8 * p.tiles, 8, 3), np.uint8)
        a[::2] = 255
        return Result("grid", a, {"backend": "torch"})

    @dataclass
    class SynP:
        steps: int = param(20, "optimisation steps", min=1, max=2000)
        seed: int = param(0, "random seed", min=0, max=1000)

    def syn(net, img, p, obs):
        CALLS["syn"] = CALLS.get("syn", 0) + 1
        a = np.random.default_rng(p.seed).random((16, 16, 3)).astype(np.float32)
        losses = []
        for i in range(p.steps):
            if obs.should_stop():
                break
            time.sleep(0.01)
            a *= 0.99
            losses.append(LossRecord(i + 1, float(a.mean())))
            obs.loss(losses[-1])
            obs.progress((i + 1) / p.steps, f"step {i + 1}")
            if i % 5 == 0:
                obs.snapshot(a, i)
        return Result("image", a, {"steps_done": len(losses)}, losses=losses)

    names = {"t_grad_a": "attribute", "t_grad_b": "attribute", "t_tiles": "inspect", "t_syn": "synthesize"}
    register("t_grad_a", "attribute", GradP, needs_grad=True)(grad)
    register("t_grad_b", "attribute", GradP, needs_grad=True)(grad)
    register("t_tiles", "inspect", TileP, needs_image=False)(tiles)
    register("t_syn", "synthesize", SynP, needs_image=False)(syn)
    yield names
    for n in names:
        _REGISTRY.pop(n, None)
    if old_store is None:
        os.environ.pop("CONVLENS_STORE", None)
    else:
        os.environ["CONVLENS_STORE"] = old_store


def _app(page: str | None = None, **state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=240)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    return at


def _ok(at) -> None:
    """No exception and no error element anywhere on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _texts(at) -> str:
    parts = [str(x.value) for x in (*at.markdown, *at.caption, *at.info, *at.warning, *at.success)]
    parts += [c for im in at.get("image") for c in im.captions]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------- pages


def test_home_page() -> None:
    at = _app()
    _ok(at)
    assert at.title[0].value == "convlens"
    assert any(s.value == "Layer map" for s in at.subheader)
    assert len(at.dataframe) == 1
    bars = at.get("progress")
    assert len(bars) == 5  # top-5
    assert "tabby" in " ".join(str(b.proto.text) for b in bars).lower()  # chelsea is a tabby cat
    assert at.sidebar.selectbox(key="model").value == "efficientnet_lite0"


@pytest.mark.parametrize("page", PAGES)
def test_every_page_opens_with_defaults(page: str) -> None:
    at = _app(page)
    _ok(at)
    assert at.title, f"{page} has no title"
    expected = {
        "compare": lambda: at.multiselect(key="cmp_methods") and at.button,
        "models": lambda: at.selectbox(key="m2_model").value == "efficientnet_lite1",
        "dataset": lambda: at.selectbox(key="ds_source").value == "foolbox:imagenet" and at.button,
        "evaluate": lambda: "gradcam" in at.multiselect(key="ev_methods").value and at.button,
        "filters": lambda: at.radio(key="flt_method") or at.selectbox(key="flt_method"),
        "patches": lambda: at.title[0].value == "Max-activating patches",
        "embeddings": lambda: at.title[0].value == "Embeddings",
        "synthesis": lambda: at.radio(key="syn_method") or at.selectbox(key="syn_method"),
        "inversion": lambda: at.title[0].value == "Inversion & texture",
        "style": lambda: len(at.subheader) >= 2,
        "benchmarks": lambda: at.title[0].value == "Benchmarks",
        "runs": lambda: at.title[0].value == "Runs",
        "concepts": lambda: at.title[0].value == "Concepts" and at.radio(key="con_section").value == "tcav",
    }[page]
    assert expected()


def test_compare_runs_the_selected_methods_with_one_scale() -> None:
    at = _app("compare")
    at.multiselect(key="cmp_methods").set_value(["t_grad_a", "t_grad_b"]).run()
    _ok(at)
    assert at.expander  # one parameter panel per chosen method, generated from the declaration
    at.selectbox(key="cmp_target").set_value(281)  # tabby
    at.slider(key="cmp.t_grad_b.power").set_value(2.0)
    at.checkbox(key="cmp_score").set_value(False)
    before = CALLS.get("grad", 0)
    at.button[0].click().run()  # the form's Run button
    _ok(at)
    assert CALLS["grad"] - before == 2
    assert len(at.main.get("image")) == 3  # the shared colour bar + two maps
    text = _texts(at)
    assert "**t_grad_a**" in text and "**t_grad_b**" in text
    assert "shared scale: 0 … 1 (normalised)" in text and "1 passes" in text and "target 281" in text
    assert text.count("?run=") == 2
    # the same request again is answered from the store; faithfulness scores from the real metrics module
    at.checkbox(key="cmp_score").set_value(True)
    at.number_input(key="cmp_score_steps").set_value(4)
    at.button[0].click().run()
    _ok(at)
    text = _texts(at)
    assert CALLS["grad"] - before == 2 and text.count("answered from the store") == 2
    from dashboard import faithfulness

    if faithfulness.available()["auc"]:
        assert text.count("deletion AUC") == 2 and text.count("(random ") == 4
    at.slider(key="cmp_alpha").set_value(0.9).run()
    at.radio(key="cmp_scale").set_value("absolute").run()
    at.checkbox(key="cmp_signed").set_value(True).run()
    _ok(at)
    assert "(absolute)" in _texts(at) and "-" in _texts(at).split("shared scale:")[1][:3]


def test_run_link_reopens_a_stored_run_without_recomputing() -> None:
    import accel
    from accel.store import RunStore, image_key

    store = RunStore()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    res = accel.Result(
        "map", np.outer(np.arange(32), np.ones(32)).astype(np.float32), {"wall_s": 0.5, "passes": 7}, img
    )
    rid = store.put(
        res, model="efficientnet_lite0", method="t_grad_a", params={"power": 2.0}, image_key=image_key(img)
    )
    before = dict(CALLS)
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=240)
    at.query_params["run"] = rid
    t0 = time.perf_counter()
    at.run()
    reopen_s = time.perf_counter() - t0
    _ok(at)
    assert at.title[0].value == "Shared run"
    assert rid in _texts(at) and "7 passes" in _texts(at)
    assert any(j.proto.body and '"power": 2.0' in j.proto.body.replace(" ", " ") for j in at.json) or any(
        "power" in j.proto.body for j in at.json
    )
    assert len(at.main.get("image")) >= 2  # input and result
    assert before == CALLS  # nothing recomputed
    assert [b.label for b in at.get("download_button")] == ["Export HTML", "Export zip"]
    print(f"reopening a stored run: {reopen_s:.2f} s (AppTest, warm model cache)")
    # an unknown id is a message, not a crash
    at2 = AppTest.from_file(APP, default_timeout=240)
    at2.query_params["run"] = "0123456789abcdef"
    at2.run()
    assert not at2.exception and "no run" in at2.error[0].value
    at3 = AppTest.from_file(APP, default_timeout=240)
    at3.query_params["run"] = "../../etc/passwd"
    at3.run()
    assert not at3.exception and "not a run id" in at3.error[0].value


def _registered(*names: str) -> bool:
    import accel

    have = {s.name for s in accel.list_methods()}
    return all(n in have for n in names)


def test_compare_with_real_methods_on_fashion_cnn() -> None:
    if not _registered("saliency", "gradcam"):
        pytest.skip("saliency/gradcam are not registered")
    at = _app("compare", model="fashion_cnn", img_source="Fashion-MNIST item", img_fashion=3)
    _ok(at)
    at.multiselect(key="cmp_methods").set_value(["saliency", "gradcam"]).run()
    at.number_input(key="cmp_score_steps").set_value(5)
    at.button[0].click().run()
    _ok(at)
    text = _texts(at)
    assert "**saliency**" in text and "**gradcam**" in text and "torch" in text
    from dashboard import faithfulness

    if faithfulness.available()["auc"]:
        assert text.count("deletion AUC") == 2
        # another session asking the same: the maps come from the store and the scores from the server's memo,
        # nothing is swept again
        calls = []
        real = faithfulness.auc_scores_many
        faithfulness.auc_scores_many = lambda *a, **k: calls.append(1) or real(*a, **k)
        try:
            again = _app("compare", model="fashion_cnn", img_source="Fashion-MNIST item", img_fashion=3)
            again.multiselect(key="cmp_methods").set_value(["saliency", "gradcam"]).run()
            again.number_input(key="cmp_score_steps").set_value(5)
            again.button[0].click().run()
            _ok(again)
            assert calls == []
            auc = [line for line in text.splitlines() if "deletion AUC" in line]
            assert [line for line in _texts(again).splitlines() if "deletion AUC" in line] == auc
            assert _texts(again).count("answered from the store") == 2
            again.number_input(key="cmp_score_steps").set_value(6)  # other curves: computed once more
            again.button[0].click().run()
            _ok(again)
            assert calls == [1]
        finally:
            faithfulness.auc_scores_many = real


def test_embeddings_scatter_selection_neighbours_and_explain() -> None:
    if not _registered("embedding"):
        pytest.skip("the embedding technique is not registered")
    at = _app("embeddings", model="fashion_cnn")
    _ok(at)
    next(s for s in at.selectbox if "pca" in s.options).set_value("pca")  # the projection picker
    at.number_input(key="emb.embedding.limit").set_value(300)
    at.slider(key="emb.embedding.grid").set_value(6)
    at.button[0].click().run()
    _ok(at)
    charts = at.get("plotly_chart")
    assert charts and "scattergl" in charts[0].proto.spec
    assert "300 points" in _texts(at) and any(s.value == "Image grid" for s in at.subheader)
    # selecting a point (what a click on the scatter does) opens the item and its neighbours
    at.session_state["emb_sel"] = 7
    at.run()
    _ok(at)
    if _registered("neighbors"):
        assert "nearest in feature space" in _texts(at).lower() and _texts(at).count("?run=") >= 2
    explain = [b for b in at.button if b.label == "Explain this item on Compare"]
    assert explain
    explain[0].click().run()
    _ok(at)
    assert at.title[0].value == "Compare attribution methods"
    assert at.session_state["img_source"] == "Fashion-MNIST item" and at.session_state["img_fashion"] == 7


def test_runs_page_lists_stored_runs() -> None:
    at = _app("runs")
    _ok(at)
    assert "run(s)" in _texts(at) and len(at.dataframe) == 1


def test_inspect_page_builds_controls_from_the_declaration() -> None:
    at = _app("filters")
    at.radio(key="flt_method").set_value("t_tiles").run()
    _ok(at)
    layer = at.selectbox(key="flt.t_tiles.layer")
    assert layer.options[0] == "(method default)" and len(layer.options) > 10
    sl = at.slider(key="flt.t_tiles.tiles")
    assert (sl.min, sl.max, sl.value) == (1, 16, 4)
    layer.set_value(layer.options[3])
    sl.set_value(6)
    at.button[0].click().run()
    _ok(at)
    assert "?run=" in _texts(at) and at.get("image")


def _wait_job(at, timeout: float = 60.0) -> None:
    wait_jobs(at, "synthesis", timeout)


def test_synthesis_job_progress_result_and_stop() -> None:
    at = _app("synthesis")
    at.radio(key="syn_method").set_value("t_syn").run()
    at.number_input(key="syn.t_syn.steps").set_value(30)
    at.button[0].click().run()
    _ok(at)
    _wait_job(at)
    _ok(at)
    assert at.get("image") and "?run=" in _texts(at)
    assert at.get("plotly_chart")  # the loss curve
    # a long run, stopped: the partial result is kept and stored
    at.number_input(key="syn.t_syn.steps").set_value(2000)
    at.button[0].click().run()
    time.sleep(0.5)
    at.run()
    stop = [b for b in at.button if b.label == "Stop"]
    assert stop, "no stop button while the job runs"
    # the live panel draws the loss as a static picture: no interactive chart is redrawn on every poll
    assert not at.get("plotly_chart")
    live = [img for el in at.get("image") for img in el.proto.imgs if img.caption.startswith("loss so far")]
    assert live and live[0].url.startswith("data:image/svg+xml")
    stop[0].click().run()
    _wait_job(at)
    _ok(at)
    job = at.session_state["_jobs"]["syn:t_syn"]
    assert job.state == "stopped" and job.run_id and 0 < len(job.result.losses) < 2000
    assert job.losses == job.result.loss_curve()  # the live curve is the typed one, step by step
    assert any("stopped" in w.value for w in at.warning)


def test_real_class_viz_job_on_fashion_cnn() -> None:
    if not _registered("class_viz"):
        pytest.skip("class_viz is not registered")
    at = _app("synthesis", model="fashion_cnn")
    at.radio(key="syn_method").set_value("class_viz").run()
    _ok(at)
    at.number_input(key="syn.class_viz.steps").set_value(12)
    at.button[0].click().run()
    _ok(at)
    _wait_job(at, timeout=120)
    _ok(at)
    job = at.session_state["_jobs"]["syn:class_viz"]
    assert job.state == "done" and job.run_id and len(job.result.losses) == 12
    assert [r.step for r in job.result.losses] == list(range(1, 13))
    assert job.losses == job.result.loss_curve()  # the live loss curve came from the typed records
    # the page's chart plots exactly the typed loss curve of the stored run
    fig = at.get("plotly_chart")[-1].proto.spec
    assert str(round(job.result.losses[-1].value, 3))[:5] in fig or "y" in fig
    assert at.get("image") and at.get("plotly_chart") and "?run=" in _texts(at)


def test_benchmarks_page_plots_stored_reports() -> None:
    from accel.store import RunStore

    RunStore().put_record(
        "bench",
        {
            "quick": True,
            "embedding": [
                {
                    "workload": "embedding",
                    "model": "m",
                    "batch": 32,
                    "engine": e,
                    "median_s": t,
                    "images_per_s": 32 / t,
                }
                for e, t in (("torch", 0.5), ("onnxruntime", 0.25))
            ],
            "occlusion": {
                "engines": {"torch": {"median_s": 2.0}, "onnxruntime": {"median_s": 1.0}},
                "masks": 169,
            },
            "markdown": "| engine | s |\n|---|---|\n| torch | 0.5 |",
        },
        title="test report",
    )
    at = _app("benchmarks")
    _ok(at)
    assert len(at.get("plotly_chart")) == 2  # time per workload and throughput
    rows = at.dataframe[0].value
    assert len(rows) == 4 and set(rows["engine"]) == {"torch", "onnxruntime"}
    assert set(rows["workload"]) == {"embedding", "occlusion"}


# ---------------------------------------------------------------------------------------------------- bad uploads


def _png_bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buf, format="PNG")  # 144 Mpx declared, a few KB on disk
    return buf.getvalue()


def _home_rerun(at):
    """Rerun the Home page as the same page. AppTest starts every run with a fresh script context, so with
    st.navigation each run looks like a page change and the entry point's sidebar widgets (and their state) are
    dropped after the first run; a real browser session keeps them. Resetting the finished page makes the next
    run a same-page rerun, like a widget interaction in the browser."""
    at._finished_page_script_hash = ""
    at._page_hash = ""
    return at.run()


def _upload(at, name: str, data: bytes):
    """Upload a file through the (only) sidebar uploader and rerun."""
    at.sidebar.file_uploader[0].set_value((name, data, "application/octet-stream"))
    _home_rerun(at)
    assert not at.exception, (name, [e.value for e in at.exception])
    return at


def _warnings(at) -> str:
    return " ".join(w.value for w in at.warning)


def test_bad_image_uploads_show_messages_and_the_app_keeps_working() -> None:
    at = _app(img_source="Upload")
    for name, data, expect in (
        ("notes.png", b"just some text, not an image at all\n" * 10, "'notes.png'"),
        ("bomb.png", _png_bomb(), "pixels"),
        ("empty.jpg", b"", "empty"),
    ):
        _upload(at, name, data)
        assert expect in at.sidebar.error[0].value, (name, [e.value for e in at.sidebar.error])
        assert expect in _warnings(at)  # the page says why it has nothing to show
        assert any("Pick or upload an image" in i.value for i in at.info)
    good = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(good, format="PNG")
    _upload(at, "red.png", good.getvalue())
    _ok(at)
    assert len(at.get("progress")) == 5  # predictions again
    at.switch_page("views/compare.py").run()
    assert not at.exception


def test_bad_checkpoints_show_messages_and_never_run_code(tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    torch.save({"weight": Evil()}, buf)
    evil = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, buf)
    wrong = buf.getvalue()

    at = _app(model="(upload a checkpoint or .onnx)", ckpt_arch="resnet18")
    for name, data, expect in (
        ("evil.pt", evil, "refusing"),
        ("wrong.pt", wrong, "does not fit architecture"),
        ("garbage.onnx", b"\x08\x01garbage", "onnx"),
        ("script.sh", b"#!/bin/sh\n", "unsupported checkpoint type"),
    ):
        _upload(at, name, data)
        errs = " ".join(e.value for e in at.sidebar.error)
        assert expect.lower() in errs.lower(), (name, errs)
        assert expect.lower() in _warnings(at).lower()
        assert any("Pick a backbone" in i.value for i in at.info)
    assert not marker.exists(), "the malicious pickle ran code"
    # uploads land only in the store's uploads folder, under generated names
    from accel.store import RunStore

    names = [p.name for p in RunStore().uploads_dir.iterdir()]
    assert names and all(n.startswith("upload-") for n in names) and not any("evil" in n for n in names)
    # back to a zoo model: everything works again
    at.sidebar.selectbox(key="model").set_value("efficientnet_lite0")
    _home_rerun(at)
    _ok(at)
    assert len(at.get("progress")) == 5
