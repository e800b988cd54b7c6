"""Background jobs for long techniques (synthesis, inversion, style) and the bench, and the fair-use line for heavy work.

A job runs in a thread on a private copy of the backbone while a fragment polls its progress, current image and loss
curve; a stop button ends it. Heavy work (MethodSpec.heavy: synthesis and dataset-scale methods, and the bench) goes
through one process-wide line, `GATE`: at most CONVLENS_HEAVY_PER_USER heavy runs per user and CONVLENS_HEAVY_SERVER
on the whole server at once; the rest wait in order with their place shown, and Stop works while waiting. A job
stops when its browser session ends (the session's resources are released by Streamlit on disconnect).
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

import accel
from accel import settings
from accel.store import image_key

from .auth import current_user
from .display import loss_figure, loss_sparkline, show_result
from .session_store import public_text
from .state import Ctx, load_run, run_key, session_space
from .ui import escape_md, link_line

log = logging.getLogger("convlens.dashboard")


def no_gc_after_reruns() -> None:
    """Turn off Streamlit's full garbage collection after every script run (the hidden `runner.postScriptGC`), once
    per server. With torch, plotly and the app loaded a full collection holds the GIL for 0.5-2 s, and a live panel
    reruns its fragment every POLL_S, so a background job spent most of its time waiting for the GIL (class_viz 40
    steps: 10-20x its API time). Python's own generational collection still runs, and the idle trimmer
    (state.start_idle_trimmer) collects in full whenever no run is in flight."""
    from streamlit import config

    if config.get_option("runner.postScriptGC"):
        config.set_option("runner.postScriptGC", False, "convlens (dashboard.jobs)")


no_gc_after_reruns()


# ---------------------------------------------------------------------------------------------------- fair use


class Ticket:
    """One heavy run's place in the line: waiting (position >= 1), running (position 0) or done."""

    def __init__(self, gate: HeavyGate, user: str, what: str, seq: int) -> None:
        self.gate, self.user, self.what, self.seq = gate, user, what, seq
        self.state = "waiting"
        self.enqueued = time.time()
        self.admitted_at: float | None = None

    @property
    def admitted(self) -> bool:
        """Whether this run holds a slot (it may start)."""
        return self.state == "running"

    @property
    def position(self) -> int:
        """0 while running, else the 1-based place among everything waiting (first come, first served)."""
        return self.gate.position(self)

    @property
    def reason(self) -> str:
        """Why this ticket waits, naming the setting that sets the limit."""
        return self.gate.reason(self)

    def wait(self, timeout: float | None = None, stop: Callable[[], bool] | None = None) -> bool:
        """Block until admitted, `stop()` turns true, or `timeout` seconds pass; True when admitted."""
        return self.gate.wait(self, timeout, stop)

    def release(self) -> None:
        """Leave the line or give the slot back (idempotent)."""
        self.gate.release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class HeavyGate:
    """First come, first served admission of heavy runs: at most `per_user` running per user and `server` in all.

    A ticket blocked only by its own user's limit does not hold up other users behind it. Limits are read from the
    settings at every admission (CONVLENS_HEAVY_PER_USER, CONVLENS_HEAVY_SERVER) unless given."""

    def __init__(self, per_user: int | None = None, server: int | None = None) -> None:
        self._per_user, self._server = per_user, server
        self._cv = threading.Condition()
        self._seq = 0
        self._waiting: list[Ticket] = []
        self._running: list[Ticket] = []
        self.log: list[
            tuple[str, str, str, int]
        ] = []  # (event, user, what, position): for tests and the admin

    def limits(self) -> tuple[int, int]:
        """(per user, server-wide) heavy runs at once."""
        per_user = self._per_user or int(settings.get("CONVLENS_HEAVY_PER_USER"))
        server = self._server or int(settings.get("CONVLENS_HEAVY_SERVER"))
        return per_user, server

    def enter(self, user: str, what: str) -> Ticket:
        """Join the line; the ticket is admitted at once when a slot is free for this user."""
        with self._cv:
            self._seq += 1
            t = Ticket(self, user, what, self._seq)
            self._waiting.append(t)
            self._admit()
            self._note("admitted" if t.admitted else "queued", t)
            return t

    def _admit(self) -> None:
        per_user, server = self.limits()
        changed = False
        for t in list(self._waiting):
            if len(self._running) >= server:
                break
            if sum(1 for r in self._running if r.user == t.user) >= per_user:
                continue
            self._waiting.remove(t)
            t.state, t.admitted_at = "running", time.time()
            self._running.append(t)
            changed = True
        if changed:
            self._cv.notify_all()

    def _note(self, event: str, t: Ticket) -> None:
        self.log.append((event, t.user, t.what, self.position(t)))
        del self.log[:-500]

    def position(self, t: Ticket) -> int:
        """0 for a running ticket, its 1-based place among the waiting ones, or 0 once done."""
        with self._cv:
            return self._waiting.index(t) + 1 if t in self._waiting else 0

    def reason(self, t: Ticket) -> str:
        """Why `t` waits: its user's other heavy run, or the server's limit (each names its setting)."""
        per_user, server = self.limits()
        with self._cv:
            if t.state != "waiting":
                return ""
            mine = sum(1 for r in self._running if r.user == t.user)
            if mine >= per_user:
                return (
                    f"your other heavy run{'s' if mine > 1 else ''} must finish first "
                    f"(CONVLENS_HEAVY_PER_USER={per_user})"
                )
            return f"{len(self._running)} heavy run(s) in progress on the server (CONVLENS_HEAVY_SERVER={server})"

    def wait(self, t: Ticket, timeout: float | None = None, stop: Callable[[], bool] | None = None) -> bool:
        """Block until `t` is admitted, `stop()` is true or `timeout` passes; True when admitted."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while t.state == "waiting":
                if stop is not None and stop():
                    return False
                left = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
                if left <= 0:
                    return False
                self._cv.wait(left)
            return t.state == "running"

    def release(self, t: Ticket) -> None:
        """Give back `t`'s slot or leave the line, and admit whoever is next."""
        with self._cv:
            if t in self._waiting:
                self._waiting.remove(t)
                self._note("left", t)
            elif t in self._running:
                self._running.remove(t)
                self._note("finished", t)
            t.state = "done"
            self._admit()
            self._cv.notify_all()

    def snapshot(self) -> dict[str, list[tuple[str, str]]]:
        """(user, what) of the running and the waiting tickets, in order."""
        with self._cv:
            return {
                "running": [(t.user, t.what) for t in self._running],
                "waiting": [(t.user, t.what) for t in self._waiting],
            }


GATE = HeavyGate()


def queue_text(what: str, t: Ticket) -> str:
    """The status line of a waiting heavy run (plain text: no user text is rendered as Markdown)."""
    return f"{what}: waiting in line, position {t.position} · {t.reason}"


@contextlib.contextmanager
def heavy_turn(what: str, key: str) -> Iterator[None]:
    """Wait for this user's turn for a heavy run in the page's own script run (place shown, a Stop button), then hold
    the slot until the block ends. Stop (or any other click) interrupts the wait and leaves the line."""
    t = GATE.enter(current_user(), what)
    try:
        if not t.admitted:
            box = st.empty()
            with box.container():
                bar = st.progress(0.0, text=escape_md(queue_text(what, t), strict=True))
                st.button("Stop", key=f"{key}_stop_waiting", icon=":material/stop:", help="leave the line")
            while not t.wait(timeout=0.5):
                # every update is also where Streamlit interrupts this run when the user clicks Stop
                bar.progress(0.0, text=escape_md(queue_text(what, t), strict=True))
            box.empty()
        yield
    finally:
        t.release()


# ---------------------------------------------------------------------------------------------------- jobs


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


SNAPSHOT_MIN_S = 0.25  # a job keeps at most four snapshots a second; the page draws the latest one
POLL_S = 1.0  # how often a live panel (a fragment, never the whole page) redraws a running job
END_WAIT = 0.7  # share of each interval a timer rerun waits for the job's end (see panel)


class JobObserver(accel.Observer):
    """What a running method reports to its job: progress, snapshots and loss records land on the job (the page's
    fragment polls them); Stop is `should_stop()`. Snapshots are kept as given, at most one per SNAPSHOT_MIN_S, and
    converted to a picture only when the page draws them (Job.snapshot)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self._last_snapshot = -float("inf")

    def progress(self, frac: float, msg: str = "") -> None:
        self.job._progress(frac, msg)

    def should_stop(self) -> bool:
        return self.job.stop_event.is_set()

    def snapshot(self, img: Any, step: int) -> None:
        now = time.monotonic()
        if now - self._last_snapshot < SNAPSHOT_MIN_S:
            self.job.snapshots_dropped += 1
            return
        self._last_snapshot = now
        if hasattr(img, "detach"):  # the optimiser changes its tensor in place: keep this step's values
            img = img.detach().clone()
        elif isinstance(img, np.ndarray):
            img = img.copy()
        self.job._set_snapshot(img, step)

    def loss(self, record: accel.LossRecord) -> None:
        if np.isfinite(record.value):
            self.job.losses.append(float(record.value))


class Job:
    """Work running in a background thread, with progress, snapshots, losses, a stop flag and, for heavy work, a
    place in the fair-use line. `work(job)` returns (run_id, result) or raises."""

    def __init__(
        self,
        name: str,
        work: Callable[[Job], tuple[str | None, accel.Result | None]],
        *,
        user: str,
        heavy: bool,
        stoppable: bool = False,
        gate: HeavyGate | None = None,
    ) -> None:
        self.name = name
        self.work = work
        self.user = user
        self.heavy = heavy
        self.gate = gate or GATE
        self.ticket: Ticket | None = None
        self.frac = 0.0
        self.msg = "starting"
        self._raw_snapshot: Any = None  # the latest kept snapshot, as the method gave it
        self._snapshot_version = 0  # bumped per kept snapshot
        self._drawn: tuple[int, Image.Image | None] = (0, None)  # (version, picture) last converted
        self._png: bytes | None = None  # that picture as PNG, encoded on first draw
        self.snapshots_kept = 0
        self.snapshots_dropped = 0
        self.conversions = 0  # snapshots converted to a picture (only when drawn, once each)
        self.losses: list[float] = []
        self.observer = JobObserver(self)
        self.state = "queued" if heavy else "running"
        self.error = ""
        self.run_id: str | None = None
        self.result: accel.Result | None = None
        self.started = time.time()
        self.finished: float | None = None
        self.stop_event = threading.Event()
        self.ended = threading.Event()  # set once the job has finished, however it finished
        self.stoppable = stoppable
        self.params: dict[str, Any] = {}  # a technique job's parameters (for_method)
        self.thread = threading.Thread(target=self._main, name=f"convlens-{name}", daemon=True)

    @classmethod
    def for_method(cls, c: Ctx, name: str, params: dict[str, Any], img: Image.Image | None) -> Job:
        """A job that runs technique `name` on a private copy of the backbone and stores its result."""
        spec = accel.get(name)
        borrow = c.borrow_net  # a private copy for the run (another run cannot touch its hooks)
        key = run_key(c, name, params, img)
        model, store, params = c.model, c.store, dict(params)

        def work(j: Job) -> tuple[str | None, accel.Result | None]:
            with borrow() as net:
                res = accel.run(name, net, img, observer=j.observer, **params)
            stopped = j.stop_event.is_set()
            res.meta.setdefault("stopped", stopped)
            j.result = res
            rid = store.put(
                res,
                model=model,
                method=name,
                params=params,
                image_key=image_key(img) if img is not None else None,
                key=None if stopped else key,  # a stopped run is not the answer to the full request
                title=f"{name} · {model}" + (" (stopped)" if stopped else ""),
            )
            return rid, res

        job = cls(name, work, user=current_user(), heavy=spec.heavy, stoppable=spec.stoppable)
        job.params = params
        return job

    def start(self) -> Job:
        """Start the thread; the job stops by itself when this browser session ends."""
        with contextlib.suppress(
            Exception
        ):  # outside a script run (tests of the class alone) there is no session
            session_space().on_close(self.stop)
        self.thread.start()
        return self

    @property
    def running(self) -> bool:
        """Queued or running (not finished)."""
        return self.state in ("queued", "running")

    @property
    def queued(self) -> bool:
        """Waiting in the fair-use line."""
        return self.state == "queued"

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started

    def stop(self) -> None:
        """Ask the job to stop (it leaves the line at once when still waiting)."""
        self.stop_event.set()

    def _set_snapshot(self, img: Any, step: int) -> None:
        self._raw_snapshot = img
        self._snapshot_version += 1
        self.snapshots_kept += 1

    @property
    def snapshot(self) -> Image.Image | None:
        """The latest snapshot as a picture, converted on first draw and reused until a newer one arrives."""
        version, raw = self._snapshot_version, self._raw_snapshot
        if version == 0:
            return None
        if self._drawn[0] != version:
            self.conversions += 1
            self._drawn = (version, _as_image(raw))
            self._png = None
        return self._drawn[1]

    @property
    def snapshot_png(self) -> bytes | None:
        """The latest snapshot encoded as PNG once, so that every poll of the live panel sends the same bytes."""
        pic = self.snapshot
        if pic is None:
            return None
        if self._png is None:
            buf = io.BytesIO()
            pic.save(buf, format="PNG")
            self._png = buf.getvalue()
        return self._png

    # -- what the method sees -----------------------------------------------------------------------------------
    def _progress(self, frac: float, msg: str = "") -> None:
        self.frac = float(min(1.0, max(0.0, frac)))
        self.msg = str(msg)
        if self.stop_event.is_set() and not self.stoppable:
            raise Stopped()  # a method that never asks should_stop() ends at its next progress report

    def _main(self) -> None:
        try:
            if self.heavy:
                self.ticket = self.gate.enter(self.user, self.name)
                while not self.ticket.wait(timeout=0.25, stop=self.stop_event.is_set):
                    if self.stop_event.is_set():
                        self.state = "stopped"
                        self.msg = "left the line before starting"
                        return
                self.started = time.time()  # the time that counts is the run's, not the wait's
            self.state = "running"
            self.run_id, res = self.work(self)
            self.result = res if res is not None else self.result
            self.state = "stopped" if self.stop_event.is_set() else "done"
        except Stopped:
            self.state = "stopped"
        except accel.BadInput as e:
            self.error, self.state = str(e), "error"
        except Exception as e:  # noqa: BLE001 - shown to the user; the app keeps running
            log.error("job %s failed:\n%s", self.name, traceback.format_exc())
            self.error, self.state = f"internal error ({type(e).__name__}: {str(e)[:300]})", "error"
        finally:
            if self.ticket is not None:
                self.ticket.release()
            self.frac = 1.0 if self.state == "done" else self.frac
            self.finished = time.time()
            self.ended.set()


def jobs() -> dict[str, Job]:
    """This session's jobs by slot (one slot per page panel)."""
    return st.session_state.setdefault("_jobs", {})


def start_job(slot: str, job: Job) -> Job:
    """Start `job` in `slot`, stopping whatever ran there before."""
    old = jobs().get(slot)
    if old is not None and old.running:
        old.stop()
    st.session_state.setdefault("_slot_runs", {}).pop(slot, None)
    jobs()[slot] = job.start()
    return job


def start_or_reuse(c: Ctx, slot: str, name: str, params: dict[str, Any], img: Image.Image | None) -> None:
    """Answer from the store if this exact request ran before, else start a background job in `slot`."""
    key = run_key(c, name, params, img)
    hit = c.store.lookup(key)
    if hit is not None:
        st.session_state.setdefault("_slot_runs", {})[slot] = hit
        old = jobs().pop(slot, None)
        if old is not None and old.running:
            old.stop()
        return
    start_job(slot, Job.for_method(c, name, params, img))


def loss_curve_of(res: accel.Result) -> list[float] | None:
    """The run's loss curve from its typed field (None when the method does not optimise)."""
    curve = res.loss_curve()
    return curve if len(curve) > 1 else None


def live_status(j: Job, slot: str) -> None:
    """The live view of a queued or running job: place in line or progress, image, loss curve, Stop button."""
    if j.queued and j.ticket is not None and not j.ticket.admitted:
        st.progress(0.0, text=escape_md(queue_text(j.name, j.ticket), strict=True))
    elif j.queued:
        st.progress(0.0, text=escape_md(f"{j.name}: joining the line", strict=True))
    else:
        st.progress(
            j.frac, text=escape_md(public_text(f"{j.name}: {j.msg} · {j.elapsed:.1f} s"), strict=True)
        )
        cols = st.columns([2, 3])
        png = j.snapshot_png
        if png is not None:
            cols[0].image(png, caption="current image", width="stretch")
        if len(j.losses) > 1:
            # static: an interactive chart redrawn every poll costs the browser more than the run's own drawing
            cols[1].image(
                loss_sparkline(j.losses), caption="loss so far (the interactive chart comes at the end)"
            )
    if st.button("Stop", key=f"{slot}_stop", type="secondary", icon=":material/stop:"):
        j.stop()
        st.toast("stopping...")


def panel(slot: str, *, poll_s: float = POLL_S, caption: str = "") -> None:
    """Show the job or stored result of `slot`: place in line or live progress, current image, stop button and loss
    curve while it runs (a fragment re-polls alone), then the result with its time and shareable link."""
    job = jobs().get(slot)
    done_id = st.session_state.get("_slot_runs", {}).get(slot)
    if job is None and done_id is None:
        return

    inline = [True]  # the first call draws inside the page's own run: it must not hold that run up

    def body() -> None:
        j = jobs().get(slot)
        if j is not None and j.running:
            live_status(j, slot)
            if inline[0]:
                inline[0] = False
                return
            # a timer rerun waits for the job's end through most of its interval, so the result is drawn as soon as
            # it exists, not up to a whole interval later (a click meanwhile is handled when the wait ends)
            if not j.ended.wait(poll_s * END_WAIT):
                return
        if j is not None and not j.running:
            st.rerun(scope="app")  # the job just ended: redraw the page without the polling timer

    j = jobs().get(slot)
    if j is not None and j.running:
        st.fragment(run_every=poll_s)(body)()
        return
    if j is not None:
        if j.state == "error":
            st.error(escape_md(public_text(f"{j.name}: {j.error}"), strict=True))
            return
        if j.state == "stopped" and j.run_id is None:
            if j.msg == "left the line before starting":
                st.warning(escape_md(f"{j.name}: stopped while waiting in line; nothing ran", strict=True))
                return
            st.warning(
                escape_md(
                    f"{j.name} stopped after {j.elapsed:.1f} s (no partial result; the method has no stop hook)",
                    strict=True,
                )
            )
            if j.snapshot is not None:
                st.image(j.snapshot, caption="last image", width=320)
            return
        run_id, res, cached = j.run_id, j.result, False
        losses = loss_curve_of(res) if res is not None else None
        losses = losses or (j.losses if len(j.losses) > 1 else None)
        if j.state == "stopped":
            st.warning(f"stopped by you after {j.elapsed:.1f} s; showing the partial result")
    else:
        run, res = load_run(done_id)
        run_id, cached, losses = done_id, True, loss_curve_of(res)
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
