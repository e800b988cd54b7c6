"""Page state in the URL, both ways: a page writes its choices (methods, target, parameters that differ from their
declared defaults) into the query string after every run of the script, and reads them once per session before
its widgets are drawn, so a copied link reproduces a whole comparison. Values are parsed by the parameter's
declaration (choices, bool, int, float, layer names); anything that does not parse is ignored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

import accel
from accel.registry import ParamInfo

PREFIX = "p."  # query keys of method parameters: p.<method>.<parameter>


def _parse(text: str, info: ParamInfo, net: Any) -> tuple[bool, Any]:
    """(ok, value) of a query value for a declared parameter; ok is False when it does not fit the declaration."""
    if info.choices:
        hit = [c for c in info.choices if str(c) == text]
        return (True, hit[0]) if hit else (False, None)
    base = str(info.type)
    try:
        if "bool" in base:
            return (text in ("True", "False")), text == "True"
        if "int" in base and "float" not in base:
            v: Any = int(text)
        elif "float" in base:
            v = float(text)
        elif info.kind == "layer":
            return (text in {li.name for li in net.layers()}), text
        else:
            return False, None
    except ValueError:
        return False, None
    lo, hi = info.min, info.upper()
    return (lo is None or v >= lo) and (hi is None or v <= hi), v


def read_method_params(key: str, methods: list[str], net: Any) -> None:
    """Put `p.<method>.<param>` query values into the widgets' session-state keys (`<key>.<method>.<param>`)."""
    q = st.query_params
    for qk in list(q):
        if not qk.startswith(PREFIX):
            continue
        m, _, name = qk[len(PREFIX) :].partition(".")
        if m not in methods:
            continue
        info = next((i for i in accel.get(m).param_infos() if i.name == name), None)
        if info is None:
            continue
        ok, v = _parse(q[qk], info, net)
        if ok:
            st.session_state[f"{key}.{m}.{name}"] = v


def write_method_params(params: Mapping[str, Mapping[str, Any]]) -> None:
    """Mirror the parameters that differ from their declared defaults as `p.<method>.<param>` (others removed)."""
    q = st.query_params
    for qk in [k for k in q if k.startswith(PREFIX)]:
        del q[qk]
    for m, values in params.items():
        defaults = {i.name: i.default for i in accel.get(m).param_infos()}
        for name, v in values.items():
            if isinstance(v, (bool, int, float, str)) and v != defaults.get(name):
                q[f"{PREFIX}{m}.{name}"] = str(v)
