"""Downloads of a map: the raw array (.npy: float32 HxW aligned with the network input, unnormalised) and a
full-resolution PNG (the map over the original photo, with a colour bar and what it explains), both built only
when the button is clicked (deferred data), so a page of maps costs nothing until a download is asked for."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

import accel
from accel.images.figure import map_figure, map_title


def npy_bytes(a: Any) -> bytes:
    """An array as .npy bytes (never pickled)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(a, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def full_png(res: accel.Result, net: Any, photo: Image.Image | None, method: str) -> bytes:
    """The map over `photo` at its own resolution (the region the network saw), colour bar and title."""
    base = photo if photo is not None else res.image
    if base is None:
        raise accel.BadInput("no image to draw the map on")
    box = net.input_box(base.size) if photo is not None else None
    fig = map_figure(base, np.asarray(res.data), box, title=map_title(method, res.meta))
    buf = io.BytesIO()
    fig.save(buf, format="PNG")
    return buf.getvalue()


def map_downloads(res: accel.Result, net: Any, photo: Image.Image | None, method: str, key: str) -> None:
    """Two small buttons under a map: `.npy` and full-resolution `.png` with colour bar."""
    a, b = st.columns(2)
    a.download_button(
        ".npy", lambda: npy_bytes(res.data), f"{method}.npy", "application/octet-stream", key=f"{key}_npy",
        on_click="ignore", help="the raw map: float32 HxW aligned with the network input, unnormalised",
    )  # fmt: skip
    b.download_button(
        "full PNG", lambda: full_png(res, net, photo, method), f"{method}_full.png", "image/png",
        key=f"{key}_png", on_click="ignore", help="the map over the full-resolution photo, with a colour bar",
    )  # fmt: skip
