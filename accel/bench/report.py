"""The bench report as Markdown (what the README shows) and the files it is written to (JSON + Markdown)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .workloads.allocator import ALLOC_WORKLOADS
from .workloads.metrics import metrics_table
from .workloads.rise import rise_table


def peak_of(r: dict[str, Any]) -> dict[str, Any]:
    """The peak a report compares with; reports written before the FMA kernel carry only the sgemm figure."""
    if "peak" in r:
        return r["peak"]
    g = r["sgemm_peak_gflops"]
    return {"gflops": g, "source": "sgemm", "label": "fp32 matmul (sgemm)", "sgemm_gflops": g}


def header(r: dict[str, Any]) -> list[str]:
    """The machine, versions and the peak every fraction is taken against."""
    m, p = r["machine"], peak_of(r)
    peak = f"{p['label']}: {p['gflops']:.0f} GFLOP/s"
    if p["source"] == "fma":
        peak += f" (one thread {p['fma']['gflops_one_thread']:.0f}); fp32 matmul (sgemm) {p['sgemm_gflops']:.0f} GFLOP/s"
    return [
        f"Machine: {m['cpu']} ({m['cores']} cores, {m['threads']} threads; {m['cpu_flags']}), "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}; peak: {peak}. Medians over alternating repeats"
        f"{' (quick: 1 repeat)' if r['quick'] else ''}.",
        "",
    ]


def embedding_table(r: dict[str, Any]) -> list[str]:
    """Throughput per model and batch, torch vs ONNX Runtime, and ONNX Runtime's share of the peak."""
    lines = [
        "| model | batch | torch img/s | ORT img/s | ORT / torch | ORT GFLOP/s | ORT % of peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    emb = r["embedding"]
    for t, o in zip(emb[0::2], emb[1::2]):
        lines.append(
            f"| {t['model']} | {t['batch']} | {t['images_per_s']:.1f} | {o['images_per_s']:.1f} | "
            f"{o['images_per_s'] / t['images_per_s']:.2f}x | {o['gflops']:.0f} | {100 * o['fraction_of_peak']:.0f}% |"
        )
    return lines


def occlusion_table(oc: dict[str, Any]) -> list[str]:
    """Seconds per engine of the efficientnet_lite0 sweep and the speed-ups over Captum."""
    lines = [
        "",
        f"Occlusion sweep, efficientnet_lite0, 224x224, window 32, stride {oc['stride']} ({oc['masks']} masks):",
        "",
        "| engine | median s | best s | vs Captum default | vs Captum ppe=64 |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, v in oc["engines"].items():
        a = oc.get("speedups_vs_captum_default", {}).get(k)
        b = oc.get("speedups_vs_captum_ppe64", {}).get(k)
        lines.append(
            f"| {k} | {v['median_s']:.2f} | {v['best_s']:.2f} | {'' if a is None else f'{a:.1f}x'} | "
            f"{'' if b is None else f'{b:.1f}x'} |"
        )
    return lines


def exactness_notes(oc: dict[str, Any]) -> list[str]:
    """How the maps agree: per-pixel maps vs the reference, vgg16 incremental, drill-down at 30% and 20%."""
    inc = oc["vgg16_incremental"]
    diff_key = next(k for k in oc if k.startswith("max_abs_diff_vs_"))
    diffs, ref_name = oc[diff_key], diff_key.removeprefix("max_abs_diff_vs_")
    dd, eng = oc["drill_down"], oc["engines"]
    lines = [
        "",
        f"- Per-pixel maps vs {ref_name}: max abs diff "
        + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
        + ".",
        f"- Incremental occlusion on vgg16 (crop stages cut at {', '.join(inc.get('stages', [inc['split']]))}): "
        f"{inc['speedup']:.2f}x the plain ONNX Runtime sweep, max abs diff {inc['max_abs_diff']:.1e}.",
        f"- Adaptive drill-down (coarse stride {dd.get('coarse_stride', 32)}, then halved strides down "
        f"to {oc['stride']} where the map scores; {dd.get('refine', 0.3):.0%} of the fine windows): "
        f"{dd['windows']} of {dd['full_windows']} windows, Spearman vs full map {dd['spearman_vs_full']:.3f}, "
        f"top-10 overlap {dd['top10_overlap']:.0%}; "
        f"{eng['ort_sweep']['median_s'] / eng['ort_drill_down']['median_s']:.2f}x the plain "
        "ONNX Runtime sweep at the same finest stride.",
    ]
    if "drill_down_refine20" in oc:
        d20 = oc["drill_down_refine20"]
        lines.append(
            f"- Drill-down at 20%: {d20['windows']} windows, Spearman vs full map "
            f"{d20['spearman_vs_full']:.3f}, top-10 overlap {d20['top10_overlap']:.0%}; "
            f"{eng['ort_sweep']['median_s'] / eng['ort_drill_down_refine20']['median_s']:.2f}x "
            "the plain ONNX Runtime sweep."
        )
    return lines


def int8_notes(oc: dict[str, Any]) -> list[str]:
    """INT8 (opt-in) speed and agreement with fp32, on efficientnet_lite0 and vgg16."""
    lines = []
    eng = oc["engines"]
    if "ort_int8_sweep" in eng:
        lines.append(
            f"- INT8 sweep: {eng['ort_sweep']['median_s'] / eng['ort_int8_sweep']['median_s']:.2f}x "
            "the fp32 ONNX Runtime sweep."
        )
    if "int8" in oc:
        q = oc["int8"]
        lines.append(
            f"- INT8 (QDQ, opt-in): map Spearman vs fp32 {q['spearman_vs_fp32']:.3f}, top-1 agreement "
            f"{q.get('top1_agreement', float('nan')):.0%} on {q.get('held_out_images', '?')} held-out photos."
        )
    if "int8_incremental" in oc:
        q = oc["int8_incremental"]
        lines.append(
            f"- INT8 incremental (every stage and the tail quantized): map Spearman vs fp32 "
            f"{q['spearman_vs_fp32']:.3f}; with drill-down {q['drill_spearman_vs_full_fp32']:.3f} vs the full fp32 "
            f"map; top-1 agreement {q.get('top1_agreement', float('nan')):.0%} on {q.get('held_out_images', '?')} "
            "held-out photos."
        )
    if "vgg16_int8" in oc:
        q = oc["vgg16_int8"]
        lines.append(
            f"- INT8 on vgg16 (same windows, score = embedding unit {q['unit']}): sweep {q['speedup_sweep']:.2f}x "
            f"the fp32 sweep, incremental {q['speedup_incremental']:.2f}x the fp32 incremental; map Spearman vs "
            f"fp32 {q['spearman_vs_fp32']:.3f} (incremental {q['incremental_spearman_vs_fp32']:.3f})."
        )
    return lines


def best_path_notes(oc: dict[str, Any]) -> list[str]:
    """The fastest exact engine and the fastest overall against Captum's default; the sweep's peak memory."""
    lines = []
    if "speedups_vs_captum_default" in oc:
        sp = oc["speedups_vs_captum_default"]
        exact = [k for k in ("ort_sweep", "ort_incremental") if k in sp]
        if exact:
            b = max(exact, key=lambda k: sp[k])
            lines.append(f"- Best exact path: {b}, {sp[b]:.1f}x Captum's default.")
        b = max(sp, key=lambda k: sp[k])
        lines.append(f"- Best overall: {b}, {sp[b]:.1f}x Captum's default.")
    if "peak_rss_mb" in oc:
        lines.append(f"- Peak RSS of the {oc['masks']}-mask sweep process: {oc['peak_rss_mb']:.0f} MiB.")
    return lines


def gpu_table(g: dict[str, Any] | None) -> list[str]:
    """GPU rows (images/s and accuracy cost per engine) where CUDA was measured; nothing otherwise."""
    if not g or "rows" not in g:
        return []
    lines = ["", f"GPU ({g['device']}), images/s:", "", "| model | batch | engine | img/s | accuracy cost |"]
    lines.append("|---|---:|---|---:|---|")
    for row in g["rows"]:
        cost = row.get("accuracy_cost") or {}
        note = row.get("error") or (f"top-1 {cost['top1_agreement']:.0%}" if "top1_agreement" in cost else "")
        ips = f"{row['images_per_s']:.1f}" if "images_per_s" in row else "-"
        lines.append(f"| {row['model']} | {row['batch']} | {row['engine']} | {ips} | {note} |")
    return [*lines, ""]


def workload_notes(r: dict[str, Any]) -> list[str]:
    """One line each: the patch scan, the C-heap tuning, dataset-scale max_patches and t-SNE."""
    ps = r["patch_scan"]
    lines = [
        f"- Max-patch scan (alexnet {ps[0]['layer']}, {ps[0]['images']} JPEGs, decode included): "
        + ", ".join(f"{p['engine']} {p['images_per_s']:.1f} img/s" for p in ps)
    ]
    al = r.get("allocator", {})
    if "speedup" in al:
        dflt, tuned = al["default"], al["tuned"]
        lines.append(
            "- Torch eager efficientnet_lite0, glibc's default heap vs convlens's tuning (fresh processes; the CLI "
            "and dashboard tune, the rows above use the default heap as a user's own code does): "
            + ", ".join(
                f"{k.replace('_', ' ')} {dflt[k]['img_s']:.0f} -> {tuned[k]['img_s']:.0f} img/s "
                f"({al['speedup'][k]:.2f}x; system time {dflt[k]['sys_share']:.0%} -> {tuned[k]['sys_share']:.0%} "
                "of user)"
                for k in ALLOC_WORKLOADS
            )
            + "."
        )
    ins = r.get("inspect", {})
    if "max_patches" in ins and "wall_s" in ins["max_patches"]:
        mp_ = ins["max_patches"]
        lines.append(
            f"- max_patches over {mp_['images']} Fashion-MNIST images (fashion_cnn features.9, {mp_['backend']}): "
            f"{mp_['wall_s']:.1f} s, peak RSS of the whole process {mp_['peak_rss_mb']:.0f} MiB."
        )
    if "tsne" in ins:
        t = ins["tsne"]
        lines.append(
            f"- t-SNE of {t['points']} fashion_cnn embeddings: openTSNE ({t['opentsne_impl']}) {t['opentsne_s']:.0f} s, "
            f"trustworthiness {t['opentsne_trustworthiness']:.3f}; scikit-learn TSNE {t.get('sklearn_s', float('nan')):.0f} s, "
            f"trustworthiness {t.get('sklearn_trustworthiness', float('nan')):.3f}."
        )
    return lines


def dashboard_table(d: dict[str, Any] | None) -> list[str]:
    """Dashboard timings against their targets, then the real-browser rows (page vs API), or why each was skipped."""
    if not d:
        return []
    b = d.get("browser") or {}
    if "skipped" in b:
        browser = [f"- Real-browser rows skipped: {b['skipped']}"]
    else:  # headless Chromium against `streamlit run`, click to result, alternating with the same work via the API
        browser = [
            "",
            f"Real browser (headless Chromium, {b.get('model')}, {b.get('cpus')} cores, medians of "
            f"{b.get('repeats')}, page and API alternating):",
            "",
            "| page, click to result | page s | API s | page / API | CPU page / API | target |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in b.get("rows", []):
            target = "< 1.5x" + (", < 5 s" if r["row"].startswith("Compare: four") else "")
            target = "note" if "seven" in r["row"] else target
            browser.append(
                f"| {r['row']} | {r['page_s']:.2f} | {r['api_s']:.2f} | {r['ratio']:.2f} "
                f"| {r.get('cpu_ratio', float('nan')):.2f} | {target} |"
            )
    if len(browser) == 5:  # a header and no rows
        browser = []
    if "skipped" in d:
        return [f"- Dashboard timings skipped: {d['skipped']}", *browser]
    sw = d["page_switch_s"]
    return [
        "",
        f"Dashboard ({d['model']}, AppTest in one process, medians of {d['repeats']}):",
        "",
        "| what | median s | target |",
        "|---|---:|---:|",
        f"| warm page switch (worst page median; max {d['page_switch_max_s']:.2f} s) | {max(sw.values()):.2f} | < 2 |",
        f"| Compare, 4 gradient methods ({', '.join(d['methods'])}) + faithfulness scores "
        f"({d['compare_scores_steps']} steps), fresh photo | {d['compare_s']:.2f} | < 5 |",
        f"| ... of which the four maps | {d['compare_maps_only_s']:.2f} | |",
        f"| reopening a stored run by its link (max {d['reopen_max_s']:.2f} s) | {d['reopen_s']:.2f} | < 1 |",
        *browser,
    ]


def jobs_table(j: dict[str, Any] | None) -> list[str]:
    """The job benchmark's own Markdown (embed throughput per engine), where it ran."""
    if not j or "markdown" not in j:
        return []
    return ["", "Dataset jobs: " + j["markdown"]]


def to_markdown(r: dict[str, Any]) -> str:
    """The report as Markdown tables (what the README shows)."""
    oc = r["occlusion"]
    lines = header(r) + embedding_table(r) + occlusion_table(oc) + exactness_notes(oc) + int8_notes(oc)
    lines += best_path_notes(oc) + rise_table(r.get("rise")) + gpu_table(r.get("gpu")) + workload_notes(r)
    lines += dashboard_table(r.get("dashboard")) + jobs_table(r.get("jobs"))
    lines += metrics_table(r.get("metrics"))
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path, store: bool) -> None:
    """Write bench-<stamp>.json and .md into `out` (their paths go to report["files"]) and, when `store`, the
    report as a "bench" record of the run store (its id in report["store_id"], or the error in "store_error")."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"bench-{stamp}.json").write_text(json.dumps(report, indent=2, default=float))
    (out / f"bench-{stamp}.md").write_text(report["markdown"])
    report["files"] = [str(out / f"bench-{stamp}.json"), str(out / f"bench-{stamp}.md")]
    if not store:
        return
    try:
        from ..store import RunStore

        title = f"bench {'quick ' if report['quick'] else ''}{report['machine']['cpu'][:40]} {stamp}"
        report["store_id"] = RunStore().put_record(
            "bench", json.loads(json.dumps(report, default=float)), title
        )
    except Exception as e:  # noqa: BLE001 - the report files are the primary output
        report["store_error"] = str(e)
