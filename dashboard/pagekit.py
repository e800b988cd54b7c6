"""Building blocks shared by the technique pages: the methods a page lists (each spec names its page), a method
picker, its declared parameters in a form, running it through the store (or as a background job), and the result
with its shareable link. Heavy methods (MethodSpec.heavy) wait for their turn in the fair-use line
(dashboard.jobs.GATE) before they compute."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

import accel
from accel import dataroots, registry
from accel.datasets import default_spec
from accel.registry import MethodSpec

from . import jobs
from .display import fit_width, show_result
from .session_store import public_text
from .state import Ctx, load_run, run_key, run_stored
from .ui import escape_md, guard, link_line, st_progress
from .widgets import dataset_options, param_controls


def methods_on(page: str) -> list[MethodSpec]:
    """The registered techniques whose spec names `page`, in registry order. Technique modules that failed to import
    (the registry records them instead of failing) are shown as a warning on the pages of their family."""
    specs = registry.methods(page=page)
    families = {s.family for s in specs} | {f for f, p in registry.FAMILY_PAGES.items() if p == page}
    broken = {
        k: v
        for k, v in registry.broken_modules().items()
        if any(k.startswith(f"accel.methods.{f}.") for f in families)
    }
    if broken:
        st.warning(
            "Some techniques could not be loaded: "
            + "; ".join(f"`{k.rsplit('.', 1)[1]}` ({escape_md(v[:160])})" for k, v in broken.items())
        )
    return specs


def pick_method(specs: Sequence[MethodSpec], key: str, label: str = "Technique") -> MethodSpec:
    """A method picker with its one-line summary and paper; returns the spec."""
    names = [s.name for s in specs]
    name = (
        st.radio(label, names, horizontal=True, key=f"{key}_method")
        if len(names) <= 6
        else st.selectbox(label, names, key=f"{key}_method")
    )
    spec = next(s for s in specs if s.name == name)
    bits = [b for b in (spec.summary, f"paper: {spec.paper}" if spec.paper else "") if b]
    if bits:
        st.caption(" · ".join(bits))
    return spec


def method_form(
    c: Ctx,
    spec: MethodSpec,
    key: str,
    submit: str = "Run",
    columns: int = 3,
    kind_defaults: dict[str, Any] | None = None,
) -> tuple[bool, dict[str, Any]]:
    """The declared parameters of `spec` in a form (nothing reruns until submit); returns (submitted, params).
    `kind_defaults` gives a page's starting value per parameter kind (e.g. the layer a page teaches with)."""
    params: dict[str, Any] = {}
    with st.form(f"{key}_{spec.name}_form"):
        infos = spec.param_infos()
        kinds = kind_defaults or {}
        defaults = {i.name: kinds[i.kind] for i in infos if i.kind in kinds}
        if infos:
            cols = st.columns(min(columns, max(1, len(infos))))
            # one control per column, round-robin: widgets keep declaration order within a column
            for i, info in enumerate(infos):
                with cols[i % len(cols)]:
                    params.update(
                        param_controls(
                            spec,
                            c.net,
                            key=key,
                            skip=[x.name for x in infos if x.name != info.name],
                            backend=c.backend,
                            defaults=defaults,
                        )
                    )
        else:
            st.caption("This technique has no parameters.")
        go = st.form_submit_button(submit, type="primary")
    return go, params


def run_heavy_aware(
    c: Ctx, name: str, params: dict[str, Any], *, key: str, img: Any = None, progress: Any = None
) -> tuple[str, Any, bool]:
    """`run_stored`, but a heavy method that is not already in the store first waits for its turn in the fair-use
    line (place shown, Stop leaves the line). Returns (run_id, result, from_cache)."""
    spec = accel.get(name)
    obs = accel.ProgressObserver(progress) if progress is not None else None
    try:
        if spec.heavy:
            image = img if img is not None else (c.img if spec.needs_image else None)
            if c.store.lookup(run_key(c, name, params, image)) is None:
                with jobs.heavy_turn(name, key):
                    return run_stored(c, name, params, img=img, observer=obs)
        return run_stored(c, name, params, img=img, observer=obs)
    except accel.BadInput as e:  # the same refusal, with server paths (uploads, data roots) shown by name
        raise type(e)(dataroots.redact(str(e))) from None


def _switch_model(name: str) -> None:
    """Button callback: pick backbone `name` in the sidebar (the sidebar is drawn after callbacks run)."""
    st.session_state["model"] = name


def backbone_fits(c: Ctx, spec: MethodSpec, key: str) -> bool:
    """Whether the sidebar's backbone has what `spec` declares it needs (MethodSpec.unmet: gradients, a classifier
    head, VGG layers). When not, the technique is shown disabled: the reason, and a button that switches the sidebar
    to a packaged backbone that has it."""
    return not unavailable(c, [spec], key)


def unavailable(c: Ctx, specs: Sequence[MethodSpec], key: str) -> list[str]:
    """The names of `specs` the sidebar's backbone cannot run (MethodSpec.unmet), shown disabled: one warning per
    missing capability naming the methods and why, with a one-click switch to a packaged backbone that has it."""
    groups: dict[tuple[str, ...], list[str]] = {}
    caps: dict[str, Any] = {}
    for spec in specs:
        missing = spec.unmet(c.net)
        if missing:
            groups.setdefault(tuple(m.name for m in missing), []).append(spec.name)
            caps.update({m.name: m for m in missing})
    for i, (need, names) in enumerate(groups.items()):
        what = " and ".join(caps[n].what for n in need)
        target = caps[need[-1]].example  # the most specific need picks the backbone (vgg19 for VGG layers)
        who = ", ".join(names)
        verb, them = ("needs", "it is") if len(names) == 1 else ("need", "they are")
        st.warning(
            escape_md(public_text(f"{who} {verb} {what}, which {c.model} lacks, so {them} disabled here.")),
            icon=":material/block:",
        )
        st.button(
            f"Switch the backbone to {target}",
            key=f"{key}_switch_{i}",
            on_click=_switch_model,
            args=(target,),
            help=f"{target} has {what}",
        )
    return [n for names in groups.values() for n in names]


def needs_image_or_stop(c: Ctx, spec: MethodSpec) -> bool:
    """False (with a hint) when `spec` needs an image and the sidebar has none."""
    if spec.needs_image and c.img is None:
        st.info(f"{spec.name} needs an input image: pick or upload one in the sidebar.")
        return False
    return True


def largest_dataset(net: Any) -> str:
    """The largest dataset this session can scan for `net` (where dataset-scale pages start): the user's own (an
    upload or a data-root folder), else Fashion-MNIST (10k test items) for a Fashion-MNIST model, else the largest
    packaged photo set."""
    opts = [v for v, _ in dataset_options(net)]
    own = [v for v in opts if v.startswith("folder:")]
    if own:
        return own[-1]  # the latest upload comes last
    if default_spec(net).startswith("fashion_mnist") and "fashion_mnist:test" in opts:
        return (
            "fashion_mnist:test"  # 10k items the sidebar can open (Explain on Compare); scans stop at `limit`
        )
    from accel.images import FOOLBOX_KINDS, foolbox_photos, sample_images

    sizes = {
        "samples": len(sample_images()),
        **{f"foolbox:{k}": len(foolbox_photos(k)) for k in FOOLBOX_KINDS},
    }
    rgb = [v for v in opts if v in sizes and v not in ("foolbox:mnist", "foolbox:fashionMNIST")]
    return max(rgb, key=lambda v: sizes[v], default="auto")


def _no_methods() -> None:
    st.info("No registered technique names this page (`register(..., page=...)` in accel/methods/).")


def run_panel(
    c: Ctx, specs: Sequence[MethodSpec], key: str, kind_defaults: dict[str, Any] | None = None
) -> tuple[str, Any] | None:
    """A synchronous technique panel: method picker, parameter form (starting from `kind_defaults` per parameter
    kind), result and link. Returns (run_id, result) of the result shown, if any."""
    if not specs:
        _no_methods()
        return None
    spec = pick_method(specs, key)
    if not backbone_fits(c, spec, key) or not needs_image_or_stop(c, spec):
        return None
    with guard(spec.name):
        go, params = method_form(c, spec, key, kind_defaults=kind_defaults)
        if go:
            bar = st_progress(spec.name)
            rid, _res, cached = run_heavy_aware(c, spec.name, params, key=key, progress=bar)
            bar.done()
            st.session_state[f"{key}_run"] = (spec.name, rid, cached)
    last = st.session_state.get(f"{key}_run")
    if last and last[0] == spec.name:
        with guard(spec.name):
            _, res = load_run(last[1])
            show_result(res, key=f"{key}_res")
            link_line(last[1], last[2])
            return last[1], res
    return None


def job_panel(c: Ctx, specs: Sequence[MethodSpec], key: str) -> None:
    """A long-running technique panel (optimisation): parameter form, then live progress, current image, stop
    button and loss curve from a background job; the result is stored and linkable. The input is the sidebar's
    image for methods that take one."""
    if not specs:
        _no_methods()
        return
    spec = pick_method(specs, key)
    if not backbone_fits(c, spec, key) or not needs_image_or_stop(c, spec):
        return
    image = c.img if spec.needs_image else None
    if image is not None:
        st.image(fit_width(image), caption="input", width=160)
    with guard(spec.name):
        go, params = method_form(c, spec, key, submit="Start")
        if go:
            registry.validate(spec.params, params, spec.name)  # refuse bad values before starting a thread
            jobs.start_or_reuse(c, f"{key}:{spec.name}", spec.name, params, image)
    with guard(spec.name):
        jobs.panel(f"{key}:{spec.name}")
