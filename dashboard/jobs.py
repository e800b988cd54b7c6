"""Background jobs for long techniques (synthesis, inversion, style): the method runs in a thread on a private copy
of the backbone while a fragment polls its progress, current image and loss curve, and a stop button ends it."""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
import traceback
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

import accel
from accel.store import image_key

from .common import Ctx, accepts, call_method, link_line, load_run, run_key
from .widgets import loss_figure, show_result

log = logging.getLogger("convlens.dashboard")
_LOSS_RE = re.compile(r"loss[\s=:]+([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


class Stopped(Exception):
    """Raised inside a method's progress callback when the user pressed stop (for methods without should_stop)."""


def _as_image(v: Any) -> Image.Image | None:
    if isinstance(v, Image.Image):
        return v
    if hasattr(v, "detach") and hasattr(v, "cpu"):
        v = v.detach().float().cpu().numpy()
    if isinstance(v, np.ndarray) and v.ndim in (3, 4) and v.size:
        a = v[0] if v.ndim == 4 else v
        if a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
            a = a.transpose(1, 2, 0)
        if a.shape[-1] not in (1, 3):
            return None
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
        return Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a)
    if isinstance(v, accel.Result):
        try:
            return v.to_image()
        except ValueError:
            return None
    return None


class Job:
    """One technique running in a background thread, with progress, snapshots, losses and a stop flag."""

    def __init__(self, c: Ctx, name: str, params: dict[str, Any], img: Image.Image | None) -> None:
        self.name = name
        self.params = dict(params)
        self.model = c.model
        self.img = img
        self.store = c.store
        self.key = run_key(c, name, params, img)
        self.img_name = c.img_name
        self.net = copy.deepcopy(c.net)  # private: another run in this session cannot touch its hooks
        self.frac = 0.0
        self.msg = "starting"
        self.snapshot: Image.Image | None = None
        self.losses: list[float] = []
        self.state = "running"
        self.error = ""
        self.run_id: str | None = None
        self.result: accel.Result | None = None
        self.started = time.time()
        self.finished: float | None = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._main, name=f"convlens-{name}", daemon=True)
        spec = accel.get(name)
        self.stoppable = accepts(spec.run, "should_stop")

    def start(self) -> Job:
        self.thread.start()
        return self

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started

    def stop(self) -> None:
        self.stop_event.set()

    # -- callbacks the method sees ------------------------------------------------------------------------------
    def _progress(self, frac: float, msg: str = "") -> None:
        self.frac = float(min(1.0, max(0.0, frac)))
        self.msg = str(msg)
        m = _LOSS_RE.search(self.msg)
        if m:
            self.losses.append(float(m.group(1)))
        if self.stop_event.is_set() and not self.stoppable:
            raise Stopped()

    def _snapshot(self, *args: Any, **kwargs: Any) -> None:
        for v in (*args, *kwargs.values()):
            im = _as_image(v)
            if im is not None:
                self.snapshot = im
                break
        loss = kwargs.get("loss")
        if isinstance(loss, (int, float)) and np.isfinite(loss):
            self.losses.append(float(loss))

    def _main(self) -> None:
        try:
            res = call_method(
                self.name,
                self.net,
                self.img,
                self.params,
                self._progress,
                should_stop=self.stop_event.is_set,
                snapshot=self._snapshot,
            )
            stopped = self.stop_event.is_set()
            res.meta.setdefault("stopped", stopped)
            self.result = res
            self.run_id = self.store.put(
                res,
                model=self.model,
                method=self.name,
                params=self.params,
                image_key=image_key(self.img) if self.img is not None else None,
                key=None if stopped else self.key,  # a stopped run is not the answer to the full request
                title=f"{self.name} · {self.model}" + (" (stopped)" if stopped else ""),
            )
            self.state = "stopped" if stopped else "done"
        except Stopped:
            self.state = "stopped"
        except accel.BadInput as e:
            self.error, self.state = str(e), "error"
        except Exception as e:  # noqa: BLE001 - shown to the user; the app keeps running
            log.error("job %s failed:\n%s", self.name, traceback.format_exc())
            self.error, self.state = f"internal error ({type(e).__name__}: {str(e)[:300]})", "error"
        finally:
            self.frac = 1.0 if self.state == "done" else self.frac
            self.finished = time.time()


def jobs() -> dict[str, Job]:
    """This session's jobs by slot (one slot per page panel)."""
    return st.session_state.setdefault("_jobs", {})


def start_or_reuse(c: Ctx, slot: str, name: str, params: dict[str, Any], img: Image.Image | None) -> None:
    """Answer from the store if this exact request ran before, else start a background job in `slot`."""
    key = run_key(c, name, params, img)
    hit = c.store.lookup(key)
    if hit is not None:
        st.session_state.setdefault("_slot_runs", {})[slot] = hit
        jobs().pop(slot, None)
        return
    old = jobs().get(slot)
    if old is not None and old.running:
        old.stop()
    st.session_state.setdefault("_slot_runs", {}).pop(slot, None)
    jobs()[slot] = Job(c, name, params, img).start()


def _loss_from_result(res: accel.Result) -> list[float] | None:
    for src in (res.meta, res.extras):
        for k in ("losses", "loss_curve", "loss_history", "history", "loss"):
            v = src.get(k)
            if isinstance(v, dict):
                v = v.get("loss") or v.get("total")
            if isinstance(v, (list, tuple, np.ndarray)) and len(v) > 1:
                a = np.asarray(v, dtype=np.float64).ravel()
                if np.isfinite(a).any():
                    return a.tolist()
    return None


def panel(slot: str, *, poll_s: float = 0.7, caption: str = "") -> None:
    """Show the job or stored result of `slot`: live progress, current image, stop button and loss curve while it
    runs (a fragment re-polls alone), then the result with its time and shareable link."""
    job = jobs().get(slot)
    done_id = st.session_state.get("_slot_runs", {}).get(slot)
    if job is None and done_id is None:
        return

    def body() -> None:
        j = jobs().get(slot)
        if j is not None and j.running:
            st.progress(j.frac, text=f"{j.name}: {j.msg} · {j.elapsed:.1f} s")
            cols = st.columns([2, 3])
            if j.snapshot is not None:
                cols[0].image(j.snapshot, caption="current image", width="stretch")
            if len(j.losses) > 1:
                cols[1].plotly_chart(loss_figure(j.losses), key=f"{slot}_live_loss")
            if st.button("Stop", key=f"{slot}_stop", type="secondary", icon=":material/stop:"):
                j.stop()
                st.toast("stopping...")
            return
        if j is not None and not j.running:
            st.rerun(scope="app")  # the job just ended: redraw the page without the polling timer

    j = jobs().get(slot)
    if j is not None and j.running:
        st.fragment(run_every=poll_s)(body)()
        return
    if j is not None:
        if j.state == "error":
            st.error(f"{j.name}: {j.error}")
            return
        if j.state == "stopped" and j.run_id is None:
            st.warning(
                f"{j.name} stopped after {j.elapsed:.1f} s (no partial result; the method has no stop hook)"
            )
            if j.snapshot is not None:
                st.image(j.snapshot, caption="last image", width=320)
            return
        run_id, res, cached = j.run_id, j.result, False
        losses = _loss_from_result(res) if res is not None else None
        losses = losses or (j.losses if len(j.losses) > 1 else None)
        if j.state == "stopped":
            st.warning(f"stopped by you after {j.elapsed:.1f} s; showing the partial result")
    else:
        run, res = load_run(done_id)
        run_id, cached, losses = done_id, True, _loss_from_result(res)
    if res is None:
        return
    show_result(res, caption=caption)
    if losses:
        st.plotly_chart(loss_figure(losses), key=f"{slot}_loss")
    if run_id:
        link_line(run_id, cached)


def result_of(slot: str) -> tuple[str | None, accel.Result | None]:
    """The finished run id and result in a slot, if any (for side-by-side timing comparisons)."""
    j = jobs().get(slot)
    if j is not None:
        return (j.run_id, j.result) if not j.running else (None, None)
    rid = st.session_state.get("_slot_runs", {}).get(slot)
    if rid:
        return rid, load_run(rid)[1]
    return None, None
