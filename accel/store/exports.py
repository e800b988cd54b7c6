"""Exports of stored runs: a self-contained HTML report (every stored string escaped, nothing fetched) and a zip of
their pictures with a manifest; damaged pictures are left out and said so."""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import time
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from ..images import colorize
from ..images.figure import map_title
from .folders import verify_artifact
from .rows import StoredRun

__all__ = ["export_html", "export_zip"]


def export_html(runs: Sequence[StoredRun]) -> bytes:
    """A self-contained HTML report (images inline as base64) of the given runs. Every stored string is
    HTML-escaped and a Content-Security-Policy forbids any fetch, so a title can never load or link anything."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\"><title>convlens report</title><style>"
        "body{font-family:sans-serif;margin:2em;color:#222}section{border-top:1px solid #ccc;padding:1em 0}"
        "img{max-width:420px;margin-right:1em;border:1px solid #ddd}table{border-collapse:collapse}"
        "td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;font-size:90%}</style></head><body>",
        f"<h1>convlens report</h1><p>{len(runs)} run(s), exported "
        f"{html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
    ]
    for r in runs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created))
        parts.append(f"<section id='run-{html.escape(r.id)}'><h2>{html.escape(r.title)}</h2>")
        parts.append(
            f"<p>run <code>{html.escape(r.id)}</code> · method <b>{html.escape(str(r.method))}</b> · model "
            f"<b>{html.escape(str(r.model))}</b> · {html.escape(when)}</p><div>"
        )
        companions = [(p.stem.removeprefix("extras."), p) for p in sorted(r.folder.glob("extras.*.png"))]
        for label, path in (("input", r.input_path), ("result", r.rendered_path), *companions):
            if path is None:
                continue
            why = verify_artifact(path)
            if why:
                parts.append(f"<p><i>{label} picture damaged ({html.escape(why)}); left out</i></p>")
                continue
            b64 = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f"<img alt='{label}' title='{label}' src='data:image/png;base64,{b64}'>")
        parts.append("</div>")
        parts.extend(_explained(r))
        rows = [("param", k, v) for k, v in r.params.items()] + [("meta", k, v) for k, v in r.summary.items()]
        if rows:
            parts.append("<table><tr><th></th><th>name</th><th>value</th></tr>")
            for what, k, v in rows:
                parts.append(
                    f"<tr><td>{what}</td><td>{html.escape(str(k))}</td>"
                    f"<td>{html.escape(json.dumps(v))}</td></tr>"
                )
            parts.append("</table>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "".join(parts).encode("utf-8")


def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _explained(r: StoredRun) -> list[str]:
    """What a run's map explains (method, target class with its probability, layer: images.map_title) and the
    colour bar of its rendered overlay (jet from the map's minimum to its maximum, the overlay's own scale)."""
    try:
        res = r.result
    except Exception:  # noqa: BLE001 - a damaged run keeps its pictures and table; the facts are left out
        return []
    meta = {**res.meta, "params": r.params}
    out = [f"<p class='explains'>{html.escape(map_title(str(r.method), meta))}</p>"]
    if res.kind == "map":
        d = np.asarray(res.data, dtype=np.float64)
        if d.size and np.isfinite(d).all():
            lo, hi = float(d.min()), float(d.max())
            ramp = np.tile(np.linspace(lo, hi, 256), (12, 1))
            bar = _png_b64(Image.fromarray(colorize(ramp, "jet", lo, hi)))
            out.append(
                f"<p class='colorbar'>{lo:.3g} <img alt='colour bar' src='data:image/png;base64,{bar}' "
                f"style='height:12px;width:256px;vertical-align:middle'> {hi:.3g} (map values, jet)</p>"
            )
    return out


def export_zip(runs: Sequence[StoredRun]) -> bytes:
    """A zip of each run's PNGs plus manifest.json describing every run (method, model, params, meta);
    damaged pictures are left out and listed under "damaged"."""
    buf = io.BytesIO()
    manifest: list[dict[str, Any]] = []
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for r in runs:
            pngs: list[str] = []
            damaged: list[str] = []
            with contextlib.suppress(OSError):
                for p in sorted(r.folder.glob("*.png")):
                    (damaged if verify_artifact(p) else pngs).append(p.name)
            for name in pngs:
                z.write(r.folder / name, f"{r.id}/{name}")
            manifest.append(
                {
                    "id": r.id,
                    "title": r.title,
                    "method": r.method,
                    "model": r.model,
                    "kind": r.kind,
                    "created": r.created,
                    "params": r.params,
                    "meta": r.summary,
                    "files": [f"{r.id}/{n}" for n in pngs],
                    "damaged": damaged,
                }
            )
        z.writestr("manifest.json", json.dumps({"convlens_runs": manifest}, indent=2))
    return buf.getvalue()
