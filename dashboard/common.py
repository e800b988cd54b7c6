"""Shared dashboard state: cached backbones, the sidebar (model, image, backend), and error display."""

from __future__ import annotations

from typing import Any

import streamlit as st
from PIL import Image

import accel
from accel import zoo
from accel.images import sample_image, sample_images


@st.cache_resource(show_spinner="Loading model...")
def get_backbone(name: str) -> Any:
    """One Backbone per model name per server process (weights are read-only)."""
    return accel.load(name)


@st.cache_data(show_spinner=False)
def get_sample(name: str) -> Image.Image:
    return sample_image(name)


def sidebar() -> tuple[Any, Image.Image | None]:
    """Model and image pickers; returns (backbone, image). Errors are shown, never raised."""
    st.sidebar.header("convlens")
    names = list(zoo.ZOO)
    model = st.sidebar.selectbox("Model", names, index=names.index(zoo.DEFAULT_MODEL), key="model")
    net = None
    try:
        net = get_backbone(model)
        st.sidebar.caption(f"{net.source}")
    except accel.BadInput as e:
        st.sidebar.error(str(e))
    samples = sorted(sample_images())
    choice = st.sidebar.selectbox(
        "Image", ["(upload)", *samples], index=1 + samples.index("chelsea") if "chelsea" in samples else 0
    )
    img = None
    if choice == "(upload)":
        up = st.sidebar.file_uploader("Upload an image", type=None, key="upload")
        if up is not None:
            try:
                img = accel.open_image(up.getvalue())
            except accel.BadInput as e:
                st.sidebar.error(f"Cannot use this file: {e}")
    else:
        img = get_sample(choice)
    st.session_state["backend"] = st.sidebar.radio(
        "Backend", ["auto", "torch", "onnxruntime"], horizontal=True
    )
    return net, img
