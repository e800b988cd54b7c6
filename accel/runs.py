"""The stored-run service: answer a request from the run store when the identical request ran before, else compute
it with `accel.run` and store it. Every front end that keeps results uses it (dashboard panels and background
jobs, `convlens explain|inspect|synthesize --save`), so "never recompute what a user already paid for" has one
implementation. A request is identical when the weights, the method, its validated parameters and the image's
pixels are (`store.request_key`)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from .errors import BadInput
from .registry import Observer, get, run, validate
from .result import Result
from .store import image_key, request_key

if TYPE_CHECKING:
    from typing import Unpack

    from .store import RunFacts


class RunIndex(Protocol):
    """What the service needs of a store: find a run by request key, and save a result (RunStore, or the
    dashboard's per-user view of one)."""

    def lookup(self, key: str) -> str | None: ...

    def get(self, run_id: str) -> Any: ...

    def put(self, result: Result, **facts: Unpack[RunFacts]) -> str: ...


@dataclass(frozen=True)
class Answer:
    """A result with the run that holds it (`run_id`) and whether it came from the store (`from_store`)."""

    run_id: str
    result: Result
    from_store: bool


def canonical(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Every declared parameter of `name` with its validated value (defaults filled in, "8" -> 8): the same
    request from the CLI (strings) and the dashboard (typed widgets) gets the same key."""
    return dataclasses.asdict(validate(get(name).params, params, name))


def request_of(net: Any, name: str, params: dict[str, Any], img: Image.Image | None) -> str:
    """The store key of a request: the weights, the method, its canonical parameters and the image's pixels."""
    return request_key(
        net.weights_hash(), name, canonical(name, params), image_key(img) if img is not None else None
    )


def answer(
    store: RunIndex,
    name: str,
    net: Any,
    img: Image.Image | None,
    params: dict[str, Any],
    *,
    model: str,
    title: str = "",
    observer: Observer | None = None,
    borrow: Callable[[], AbstractContextManager[Any]] | None = None,
    open_run: Callable[[str], Result] | None = None,
) -> Answer:
    """Answer `accel.run(name, net, img, **params)` from `store` or compute and store it.

    `borrow()` lends the backbone copy to compute with (a server keeps one per run in flight); `open_run(id)`
    reopens a stored run (default: `store.get(id).result`); a stored run that can no longer be opened (damaged,
    no longer shared) is computed again."""
    spec = get(name)
    image = img if spec.needs_image or img is not None else None
    key = request_of(net, name, params, image)
    hit = store.lookup(key)
    if hit is not None:
        reopen = open_run or (lambda rid: store.get(rid).result)
        with contextlib.suppress(BadInput):
            return Answer(hit, reopen(hit), True)
    with borrow() if borrow is not None else contextlib.nullcontext(net) as mine:
        res = run(name, mine, image, observer=observer, **params)
    rid = store.put(
        res,
        model=model,
        method=name,
        params=canonical(name, params),
        image_key=image_key(image) if image is not None else None,
        key=key,
        title=title or name,
    )
    return Answer(rid, res, False)
