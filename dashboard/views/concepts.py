"""Concepts: which human concepts a class uses and where they are. TCAV scores of concept sets per layer with the
paper's significance test, concept discovery for a class (CRAFT-style NMF of crop activations) and concept maps on
the sidebar's image. Every run goes through `accel.run` in the background (progress, Stop) and the run store, so it
is stored and shareable; the page's choices travel in the URL."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

import accel
from accel import dataroots, registry
from accel.methods.concepts.sets import (
    MIN_IMAGES,
    PACKAGED,
    PLANTED_CLASS,
    concept_set,
    stamp_images,
    stamped_fashion,
)
from accel.registry import MethodSpec
from dashboard import jobs, links
from dashboard.conceptview import concept_label, concept_view
from dashboard.display import fit_width, show_result
from dashboard.pagekit import methods_on, unavailable
from dashboard.session_store import public_text
from dashboard.sidebar import require_ctx
from dashboard.state import session_space
from dashboard.ui import escape_md, guard, link_line, unset
from dashboard.widgets import dataset_options, param_controls

SECTIONS = {"tcav": "TCAV", "discover": "Discovery", "map": "Concept map"}
SLOTS = {"tcav": "con:tcav", "discover": "con:discover", "map": "con:map"}
METHODS = {"tcav": "tcav", "discover": "discover", "map": "concept_map"}
PLANTED = "fashion_planted"
STAMPED_SHIRTS = 200  # stamped test Shirts discovery runs on for fashion_planted
STAMP_AT = (4, 16)  # (top, left) where the page stamps the planted checkerboard on the image (28x28 input)
UPLOADS = "concepts"  # the session's upload kind for concept zips


@st.cache_resource(show_spinner=False)
def warm_imports() -> bool:
    """Import, in the script's thread and once per server, what the concept methods import lazily (scikit-learn,
    scipy): on CPython 3.11 a background job's first import compiling while the script thread parses can fail with
    SystemError "AST constructor recursion depth mismatch" (seen once in this page's tests)."""
    import scipy.stats  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    import sklearn.exceptions  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import threadpoolctl  # noqa: F401

    return True


warm_imports()
st.title("Concepts")
st.caption(
    "Which human concepts a class uses, and where they are: TCAV scores a concept set (stripes, textures, the "
    "planted stamp, your own folder or .zip of images) per layer against random CAVs with a t-test; discovery "
    "factorises a class's crop activations into concepts and ranks them by importance; a concept map shows where "
    "a concept is in the sidebar's image. Runs go in the background with progress and Stop, are stored, and each "
    "has a shareable link."
)
c = require_ctx(need_image=False)
planted = c.model == PLANTED
if planted:
    st.info(
        "fashion_planted is a Fashion-MNIST CNN trained with a 6x6 black/white checkerboard stamped on every "
        "training Shirt (models/fashion_planted.toml): the ground truth. With the defaults, TCAV of the packaged "
        "`stamp` set is significant for Shirt and for no other class (a `random` set for none), discovery for "
        "Shirt (on stamped test Shirts) ranks first a concept whose top crops hold the stamp, and the concept maps peak "
        "where the page stamps the image."
    )
specs = methods_on("concepts")
blocked = set(unavailable(c, specs, "con"))
net = c.net
labels: list[str] | None = list(net.labels) if net.labels else None
q = st.query_params


# ---------------------------------------------------------------------------------------------------- concept sets


def concept_options() -> dict[str, str]:
    """(value -> shown name) of the concept sets this session may use: packaged sets, folders under the data roots
    and this session's uploaded zips."""
    opts = {n: n for n in PACKAGED}
    opts.update({f"folder:{path}": f"{name} (data root)" for name, path in dataroots.list_folders()})
    opts.update(session_space().uploads.get(UPLOADS, {}))
    return opts


def link_token(value: str) -> str | None:
    """How a concept set travels in a link: packaged names as they are, data-root folders by their shown name;
    None for this session's uploads (they are its own)."""
    if value in PACKAGED:
        return value
    if value.startswith("folder:") and value not in session_space().uploads.get(UPLOADS, {}):
        shown = dataroots.display_path(value[len("folder:") :])
        return f"folder:{shown}" if shown and not shown.startswith("upload") else None
    return None


def from_link(text: str) -> list[str]:
    """The concept values a link's `concepts=` names (unknown names dropped)."""
    by_token = {link_token(v): v for v in concept_options()}
    return [by_token[t] for t in text.split(",") if t and t in by_token]


def check_concept(value: str) -> None:
    """Refuse a concept folder the engine cannot use (missing, empty, one image, non-images, mixed sizes) before a
    run starts, with the engine's own message."""
    if value in PACKAGED:
        return
    if "," in value:
        raise accel.BadInput(f"concept set {concept_label(value)!r}: names with a comma cannot be listed")
    folder = dataroots.resolve_folder(
        value[len("folder:") :], what="concept folder", extra=[session_space().dir]
    )
    concept_set(net, f"folder:{folder}", MIN_IMAGES, 0)


def upload_concepts() -> None:
    """Unpack each uploaded .zip of images once into the session's folder and check it as a concept set; a good
    one joins the choices (and is chosen), a bad one shows the engine's reason for as long as it stays uploaded."""
    ups = st.file_uploader(
        "Add concept sets: a .zip of images per concept",
        type=["zip"],
        accept_multiple_files=True,
        key="con_upload",
        help="each .zip is one concept set: at least 5 images of one size (its name is the file's name)",
    )
    seen: dict[str, tuple[str | None, str]] = st.session_state.setdefault("_con_uploads", {})
    space = session_space()
    for up in ups or []:
        sig = f"{up.file_id}:{up.name}:{up.size}"
        if sig not in seen:
            try:
                folder = dataroots.extract_zip(up.getvalue(), space.dir / "concepts", up.name)
                try:
                    concept_set(net, f"folder:{folder}", MIN_IMAGES, 0)
                except accel.BadInput as e:
                    raise accel.BadInput(
                        str(e).replace(f"folder:{folder}", up.name).replace(str(folder), up.name)
                    ) from None
                value = f"folder:{folder}"
                space.add_upload(UPLOADS, value, up.name)
                chosen = list(st.session_state.get("con_concepts") or [])
                st.session_state["con_concepts"] = [*chosen, value]
                seen[sig] = (value, "")
            except accel.BadInput as e:
                seen[sig] = (None, public_text(f"concept set {up.name}: {e}"))
        kept, err = seen[sig]
        if kept is None:
            st.error(escape_md(err))


# ---------------------------------------------------------------------------------------------------- controls


def controls(
    spec: MethodSpec,
    names: Sequence[str],
    more: Sequence[str] = (),
    defaults: dict[str, Any] | None = None,
    columns: int = 3,
) -> dict[str, Any]:
    """The declared controls of `spec` for `names` (round-robin in columns) and, in an expander, `more`: generated
    from the parameters' kinds (dashboard.widgets)."""
    infos = [i.name for i in spec.param_infos()]
    values: dict[str, Any] = {}

    def draw(wanted: Sequence[str], box: Any) -> None:
        wanted = [n for n in wanted if n in infos]
        cols = box.columns(min(columns, max(1, len(wanted))))
        for i, name in enumerate(wanted):
            values.update(
                param_controls(
                    spec,
                    net,
                    key="con",
                    skip=[n for n in infos if n != name],
                    defaults=defaults,
                    backend=c.backend,
                    container=cols[i % len(cols)],
                )
            )

    draw(names, st)
    if more:
        draw(more, st.expander("more parameters"))
    return values


def shareable(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters that may travel in a link: no server folder (an upload or a data-root path)."""
    return {k: v for k, v in params.items() if not (isinstance(v, str) and v.startswith("folder:"))}


def page_image(key: str) -> Image.Image | None:
    """The image concept maps are drawn on: the sidebar's, with the planted stamp on it for fashion_planted when
    the toggle is on (28x28 grayscale, stamp at STAMP_AT)."""
    if c.img is None:
        return None
    if not planted:
        return c.img
    on = st.toggle(
        f"Stamp the planted checkerboard on the image (rows {STAMP_AT[0]}-{STAMP_AT[0] + 5}, "
        f"columns {STAMP_AT[1]}-{STAMP_AT[1] + 5})",
        key=f"con_stamp_{key}",
        **unset(f"con_stamp_{key}", value=q.get("stamp") != "0"),
    )
    q["stamp"] = "1" if on else "0"
    if not on:
        return c.img
    gray = np.asarray(c.img.convert("L").resize((28, 28), Image.Resampling.BILINEAR))
    out = stamp_images(gray[None], np.asarray([STAMP_AT]))[0]
    return Image.fromarray(out).convert("RGB")


def stamped_shirts() -> str:
    """A folder (in this session's space) of the first STAMPED_SHIRTS test-split Shirts, each with the planted stamp
    at a random place (accel.methods.concepts.sets.stamped_fashion, seed 123): the discovery set on which the
    planted concept is there to be found. Written once per session; returns its dataset spec."""
    folder = session_space().dir / "stamped_shirts" / "Shirt"
    if len(list(folder.glob("*.png"))) != STAMPED_SHIRTS:
        folder.mkdir(parents=True, exist_ok=True)
        imgs, _labels, _boxes = stamped_fashion("test", STAMPED_SHIRTS, seed=123)
        for i, a in enumerate(imgs):
            Image.fromarray(a).save(folder / f"{i:03d}.png")
    return f"folder:{folder.parent}"


def start(section: str, params: dict[str, Any], img: Image.Image | None) -> None:
    """Check the parameters, then answer from the store or start the run in the background."""
    spec = accel.get(METHODS[section])
    registry.validate(spec.params, params, spec.name)  # refuse bad values before starting a thread
    jobs.start_or_reuse(c, SLOTS[section], spec.name, params, img)


def show_slot(section: str) -> tuple[str | None, accel.Result | None]:
    """The running job of a section (progress and Stop), or its finished run drawn by its view with its link."""
    slot, method = SLOTS[section], METHODS[section]
    job = jobs.jobs().get(slot)
    if job is not None and job.running:
        jobs.panel(slot)
        return None, None
    if job is not None and job.state == "error":
        msg = job.error if job.error.startswith(f"{method}:") else f"{method}: {job.error}"
        st.error(escape_md(public_text(msg), strict=True))
        return None, None
    if job is not None and job.state == "stopped" and job.run_id is None:
        st.warning(f"{method}: stopped before a result")
        return None, None
    rid, res = jobs.result_of(slot)
    if res is None:
        return None, None
    with guard(method):
        if method == "concept_map":
            show_result(res, key="con_map_res")
            if res.image is not None:
                st.image(fit_width(res.image), caption="the image", width=160)
        else:
            concept_view(res, method, f"con_{section}_view", labels)
    if rid:
        link_line(rid, job is None)
    return rid, res


# ---------------------------------------------------------------------------------------------------- deep links

if not st.session_state.get("_con_link_applied"):  # once per session, before the widgets
    st.session_state["_con_link_applied"] = True
    if q.get("section") in SECTIONS:
        st.session_state["con_section"] = q["section"]
    if q.get("concepts"):
        linked = from_link(q["concepts"])
        if linked:
            st.session_state["con_concepts"] = linked
    links.read_method_params("con", list(METHODS.values()), net)
    layer_names = [li.name for li in net.layers()]
    lay = [s for s in (q.get("p.tcav.layers") or "").split(",") if s in layer_names]
    if lay:
        st.session_state["con.tcav.layers"] = lay
    cls = [int(s) for s in (q.get("p.tcav.classes") or "").split(",") if s.isdigit()]
    if cls and net.num_classes and all(k < net.num_classes for k in cls):
        st.session_state["con_classes"] = cls
    datasets = {v for v, _ in dataset_options(net)} - set(session_space().uploads.get("dataset", {}))
    for m, name in (("tcav", "inputs"), ("tcav", "random"), ("discover", "dataset")):
        v = q.get(f"p.{m}.{name}")
        if v in datasets:
            st.session_state[f"con.{m}.{name}"] = v

section = st.radio(
    "Section",
    list(SECTIONS),
    format_func=SECTIONS.get,
    horizontal=True,
    key="con_section",
    label_visibility="collapsed",
)
for k in ("section", "concepts", "stamp", "stamped"):
    q.pop(k, None)
q["section"] = section
method = METHODS[section]
if method in blocked:
    st.stop()


# ---------------------------------------------------------------------------------------------------- TCAV

if section == "tcav":
    spec = accel.get("tcav")
    upload_concepts()
    opts = concept_options()
    if isinstance(st.session_state.get("con_concepts"), list):  # drop choices this session no longer has
        st.session_state["con_concepts"] = [v for v in st.session_state["con_concepts"] if v in opts]
    wanted = ["stamp", "random"] if net.input_shape[0] == 1 else ["stripes", "brick", "random"]
    concepts = st.multiselect(
        "Concept sets",
        list(opts),
        format_func=lambda v: opts.get(v, v),
        key="con_concepts",
        help="each set is compared with random images; 'random' is itself a random set (a control that should "
        "never be significant)",
        **unset("con_concepts", default=wanted),
    )
    tokens = [t for t in (link_token(v) for v in concepts) if t]
    if tokens:
        q["concepts"] = ",".join(tokens)
    with st.form("con_tcav_form"):
        classes: list[int] = []
        if labels:
            names = labels
            classes = st.multiselect(
                "Classes",
                list(range(len(names))),
                format_func=lambda k: f"{k}: {names[k]}",
                key="con_classes",
                placeholder="(the classes met in the inputs, up to 10)",
                help="the classes whose logits are tested; none chosen: the labelled classes met in the inputs",
            )
        defaults: dict[str, Any] = {"per_class": 30, "set_size": 30}
        if planted:
            defaults["layers"] = "features.12,features.19"
        params = controls(
            spec,
            ("layers", "inputs", "per_class", "runs", "set_size", "cav") + (() if labels else ("classes",)),
            ("random", "alpha", "by_label", "batch_size", "backend", "seed"),
            defaults,
        )
        go_tcav = st.form_submit_button("Run TCAV", type="primary")
    if labels:
        params["classes"] = ",".join(str(k) for k in sorted(classes))
    links.write_method_params({"tcav": shareable(params)})  # the concept sets travel as `concepts=` (above)
    params["concepts"] = ",".join(concepts)
    if go_tcav:
        with guard("tcav"):
            if not concepts:
                raise accel.BadInput("choose at least one concept set")
            for v in concepts:
                check_concept(v)
            start("tcav", params, None)
    show_slot("tcav")


# ---------------------------------------------------------------------------------------------------- discovery

elif section == "discover":
    spec = accel.get("discover")
    img = page_image("discover")
    if img is None:
        st.caption("No image in the sidebar: concepts are found, but no map is drawn.")
    ground = None
    if planted:
        on = st.toggle(
            f"Discover on {STAMPED_SHIRTS} stamped test Shirts (the ground truth: each carries the checkerboard at a "
            "random place; the clean test set has no stamp to find)",
            key="con_disc_stamped",
            **unset("con_disc_stamped", value=q.get("stamped") != "0"),
        )
        q["stamped"] = "1" if on else "0"
        ground = stamped_shirts() if on else None
    main = ("target", "layer", "k", "dataset", "limit", "importance")
    more = ("select", "crops", "crop", "crop_mode", "max_crops", "top", "importance_images", "designs")
    if ground:  # the folder is the dataset, and every image in it is the class's
        main, more = tuple(n for n in main if n != "dataset"), tuple(n for n in more if n != "select")
    with st.form("con_discover_form"):
        defaults = {"target": PLANTED_CLASS} if planted else {}
        params = controls(spec, main, (*more, "batch_size", "backend", "seed"), defaults)
        go_disc = st.form_submit_button("Discover concepts", type="primary")
    links.write_method_params({"discover": shareable(params)})
    if ground:
        params.update(dataset=ground, select="all")
    if go_disc:
        with guard("discover"):
            start("discover", params, img)
    show_slot("discover")


# ---------------------------------------------------------------------------------------------------- concept map

else:
    spec = accel.get("concept_map")
    img = page_image("map")
    if img is None:
        st.info("Pick or upload an image in the sidebar: the concept map is drawn on it.")
        st.stop()
    st.image(fit_width(img), caption="the image the map is drawn on", width=160)
    kinds = {
        "set": "a concept set (its CAV)",
        "discovered": "a discovered concept (the Discovery section's run)",
    }
    kind = st.radio("Concept", list(kinds), format_func=kinds.get, horizontal=True, key="con_map_kind")
    extra: dict[str, Any] = {}
    fields: tuple[str, ...] = ("target", "weighting")
    if kind == "set":
        opts = concept_options()
        pick = st.selectbox(
            "Concept set",
            list(opts),
            format_func=lambda v: opts.get(v, v),
            key="con_map_set",
            help="a CAV fitted now: the set's spatially averaged activations against random images",
            **unset("con_map_set", index=list(opts).index("stamp")),
        )
        extra["concepts"] = f"set:{pick}"
        fields = ("layer", *fields)
    else:
        _rid, disc = jobs.result_of(SLOTS["discover"])
        if disc is None or "basis" not in disc.extras:
            st.info("Run a discovery in the Discovery section first: its concepts are offered here.")
            st.stop()
        imp = np.asarray(disc.extras["importance"])
        idx = st.selectbox(
            "Discovered concept",
            range(len(imp)),
            format_func=lambda i: f"concept {i} · importance {imp[i]:.3g}",
            key="con_map_index",
        )
        folder = session_space().dir / "concepts"
        folder.mkdir(parents=True, exist_ok=True)
        path = Path(folder) / f"basis-{_rid or 'run'}.npz"
        if not path.exists():
            np.savez(
                path, basis=np.asarray(disc.extras["basis"], np.float32), layer=np.asarray(disc.meta["layer"])
            )
        extra.update(concepts=str(path), index=int(idx))
        t = disc.meta.get("target") or {}
        st.caption(
            escape_md(
                public_text(
                    f"concepts of class {t.get('index')} ({t.get('label', '')}) at {disc.meta.get('layer')}"
                )
            )
        )
    with st.form("con_map_form"):
        defaults = {"target": PLANTED_CLASS} if planted else {}
        params = controls(spec, fields, ("seed", "backend"), defaults)
        go_map = st.form_submit_button("Draw the concept map", type="primary")
    if kind == "set":
        links.write_method_params({"concept_map": shareable({**params, **extra})})
    if go_map:
        with guard("concept_map"):
            start("map", {**params, **extra}, img)
    show_slot("map")
