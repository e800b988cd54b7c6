"""TCAV (Kim et al. 2018): how much a human concept pushes a class, per layer, with the paper's significance test.

A concept activation vector (CAV) v_C at layer l separates the activations a_l(x) of concept images from those of
random counterexamples: the normal of a linear classifier (scikit-learn SGD, as Kim et al. and Captum) or FastCAV's
mean difference mean(a_l(C)) - mean(a_l(R)) (Schmalwasser et al. 2025). The TCAV score of class k is the fraction
of class-k inputs whose logit rises along v_C:  TCAV = |{x : grad_{a_l} z_k(x) . v_C > 0}| / |X_k|.

Significance: `runs` CAVs of the concept, each against its own random set R_i, give `runs` scores; random CAVs
(R_0 against R_i) give the null distribution. A two-sided t-test (scipy) compares the two; p is Bonferroni-corrected
across the concepts tested (p_adj = min(1, m p)), and a score counts when p_adj < alpha. Each CAV's held-out
accuracy (a third of the sets) is reported.

Activations of the concept and random sets and of the class inputs come from the batched runner (ONNX Runtime when
it works); the directional derivatives run autograd from the layer onward only (the architecture's declared
decomposition), batched, and are projected on every CAV at once, so memory grows with the CAVs, never with the
number of class inputs. The result is kind "points" because TCAV answers with numbers, not a picture: `data` is
(rows, 2), the mean score and its std over runs (a bar and its whisker) for each concept, layer and class in the
order of `extras["table"]`, whose rows add the random null, p, Bonferroni p, significance and CAV accuracy for
pages to plot; `to_image()` draws the bars.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ...errors import BadInput
from ...registry import BACKEND, DATASET, LAYERS, SEED, Observer, param, register
from ...result import Result
from ...runtime.runner import runner
from .sets import MIN_IMAGES, PACKAGED, concept_set, random_set

if TYPE_CHECKING:
    from ...backbone import Backbone

MAX_CLASSES = 10  # classes found in the stream when none are named
COLUMNS = (
    "concept",
    "layer",
    "class",
    "score",
    "std",
    "random",
    "random_std",
    "p",
    "p_adj",
    "significant",
    "acc",
)


@dataclass
class TCAVParams:
    concepts: str = param(
        "stamp,random",
        "comma-separated concept sets: packaged ("
        + ", ".join(PACKAGED)
        + "), image folders or zips of images",
        kind="dataset",
        presets=PACKAGED,
    )
    layers: str = LAYERS(
        "", "layers to test, comma-separated ('' = the CAM layer, usually the last conv map)"
    )
    classes: str = param(
        "", "comma-separated class indices ('' = the labelled classes met in `inputs`, up to 10)"
    )
    inputs: str = DATASET(
        "class inputs: a labelled dataset ('auto' = the model's: Fashion-MNIST test, foolbox...)"
    )
    per_class: int = param(100, "class inputs per class", min=1, max=10_000, limit="")
    by_label: bool = param(
        True, "explain class k on the inputs labelled k (off: every input for every class)"
    )
    random: str = param(
        "auto", "dataset the random counterexamples come from ('auto': see docs)", kind="dataset"
    )
    set_size: int = param(50, "images per concept set and per random set", min=MIN_IMAGES, max=1000, limit="")
    runs: int = param(
        20, "CAVs per concept, each against its own random set (Kim et al.: many)", min=2, max=100
    )
    cav: str = param(
        "mean",
        "CAV: mean difference (FastCAV; at a layer feeding a linear head its sign is that of the sets' mean logit "
        "gap) or a linear classifier (SGD, Kim et al.)",
        choices=("mean", "linear"),
    )
    alpha: float = param(0.01, "significance level, after Bonferroni across concepts", min=1e-9, max=0.5)
    batch_size: int = param(64, "class inputs per streamed batch", min=1, max=1024)
    backend: str = BACKEND()
    seed: int = SEED("concept and random sets, CAV fits")


# ---------------------------------------------------------------------------------------------------- CAVs


def holdout_split(n_pos: int, n_neg: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train masks over the positives and the negatives: two thirds of each for fitting (at least one),
    the rest held out (at least one), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (n_pos, n_neg):
        k = min(n - 1, max(1, round(2 * n / 3)))
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[:k]] = True
        out.append(mask)
    return out[0], out[1]


def fit_cav(
    pos: np.ndarray, neg: np.ndarray, kind: str = "linear", seed: int = 0
) -> tuple[np.ndarray, float]:
    """A unit CAV pointing from the negatives (N,D) towards the positives (M,D), fitted on two thirds of each, and
    its accuracy on the held-out third. "linear": SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3), Captum's
    default; "mean": mean(pos) - mean(neg), classified by the side of the midpoint."""
    tp, tn = holdout_split(len(pos), len(neg), seed)
    if kind == "mean":
        mp, mn = pos[tp].mean(0, dtype=np.float64), neg[tn].mean(0, dtype=np.float64)
        v = mp - mn
        mid = (mp + mn) / 2
        hits = np.concatenate([(pos[~tp] - mid) @ v > 0, (neg[~tn] - mid) @ v <= 0])
    elif kind == "linear":
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import SGDClassifier

        x = np.concatenate([pos[tp], neg[tn]])
        y = np.concatenate([np.ones(int(tp.sum())), np.zeros(int(tn.sum()))])
        clf = SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x, y)
        v = clf.coef_[0].astype(np.float64)
        hits = np.concatenate([clf.predict(pos[~tp]) == 1, clf.predict(neg[~tn]) == 0])
    else:
        raise BadInput(f"cav must be 'linear' or 'mean', got {kind!r}")
    norm = float(np.linalg.norm(v))
    unit = v / norm if norm > 0 else v
    return unit.astype(np.float32), float(hits.mean())


# ---------------------------------------------------------------------------------------------------- gradients


def tail(net: Backbone, layer: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The network from `layer`'s output to the logits, from the architecture's declared decomposition (chain ->
    head -> pool -> fc), or None when `layer` is not a cut point of it."""
    from ...archs import decomposition
    from ...taps import resolve

    dec = decomposition(net.module)
    if dec is None or net.module is None:
        return None
    names = [n for n, _ in dec.chain]
    rest: list[torch.nn.Module]
    if layer in names:
        rest = [m for _, m in dec.chain[names.index(layer) + 1 :]] + (
            [dec.head] if dec.head is not None else []
        )
    elif dec.head is not None and resolve(net.module, layer) is list(dec.head.modules())[-1]:
        rest = []
    else:
        return None
    fc = dec.fc

    def run(a: torch.Tensor) -> torch.Tensor:
        for m in rest:
            a = m(a)
        z = torch.flatten(dec.pool(a), 1)
        return fc(z) if fc is not None else z

    return run


def layer_gradients(
    net: Backbone, layer: str, x: np.ndarray, acts: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    """grad_{a_l} z_{k_i}(x_i) for each input (rows of x, their layer activations `acts` and classes k_i),
    flattened to (B, D): autograd through the network's tail when the layer is a cut point, else through the whole
    network with the layer's output replaced by `acts` (the same values, so the same gradient)."""
    from ._factor import replaced_output

    a = torch.from_numpy(np.ascontiguousarray(acts)).float().requires_grad_(True)
    fn = tail(net, layer)
    with torch.enable_grad():
        if fn is not None:
            logits = fn(a)
        else:
            module = net.require_module("TCAV's directional derivatives")
            with replaced_output(net, layer, a):
                logits = module(torch.from_numpy(x))
        idx = torch.from_numpy(np.asarray(classes, dtype=np.int64))[:, None]
        (g,) = torch.autograd.grad(logits.gather(1, idx).sum(), a)
    return g.reshape(len(g), -1).numpy()


def sign_scores(grads: np.ndarray, cavs: np.ndarray) -> np.ndarray:
    """Per CAV, how many inputs have a positive directional derivative: sum_i [grad_i . v_j > 0] -> (n_cavs,)."""
    g = torch.from_numpy(np.ascontiguousarray(grads, dtype=np.float32))
    v = torch.from_numpy(np.ascontiguousarray(cavs, dtype=np.float32))
    return (
        (g @ v.T > 0).sum(0).numpy()
    )  # torch: numpy's threaded BLAS stalls on small products on a busy machine


# ---------------------------------------------------------------------------------------------------- streaming


def parse_layers(net: Backbone, text: str) -> list[str]:
    """Layer names from a comma-separated list ('' = the CAM layer), each checked against net.layers()."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        default = net.default_spatial_layer()
        if default is None:
            raise BadInput("tcav: this network has no spatial layer; name the layers to test")
        names = [default]
    for n in names:
        li = net.layer(n)
        if len(li.out_shape) < 1 or n in ("logits",):
            raise BadInput(f"tcav: layer {n!r} has no activations to test")
    if len(set(names)) != len(names):
        raise BadInput(f"tcav: layers are listed twice: {text!r}")
    return names


def parse_classes(net: Backbone, text: str) -> list[int]:
    """Class indices from a comma-separated list, each a valid index of the head (empty list = find them)."""
    out = []
    for s in (t.strip() for t in text.split(",")):
        if not s:
            continue
        if not s.lstrip("-").isdigit():
            raise BadInput(f"tcav: classes must be comma-separated class indices, got {s!r}")
        k = net.check_target(int(s))
        if k is None or k < 0:
            raise BadInput(f"tcav: class {s} is not a class index")
        out.append(k)
    if len(set(out)) != len(out):
        raise BadInput(f"tcav: classes are listed twice: {text!r}")
    return out


def flat_activations(net: Backbone, layers: list[str], x: np.ndarray, backend: str) -> dict[str, np.ndarray]:
    """Activations of a preprocessed batch at every layer, flattened to (N, D) float32 (through the runner)."""
    out = runner(net, layers, backend=backend).run(x)
    return {n: np.asarray(out[n], dtype=np.float32).reshape(len(x), -1) for n in layers}


def class_batches(
    net: Backbone, p: TCAVParams, classes: list[int]
) -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
    """Streamed (inputs, class of each row, fraction done) from `p.inputs`: rows labelled k for each class k (up to
    `per_class` each; classes found in the stream when none are named), or every row for every class."""
    from ..inspect._common import resolve_dataset

    ds = resolve_dataset(net, p.inputs, 0)
    if p.by_label and not ds.labelled:
        raise BadInput(f"tcav: inputs {ds.spec!r} carry no labels; turn by_label off and name the classes")
    if not p.by_label and not classes:
        raise BadInput("tcav: with by_label off, name the classes to explain")
    counts: dict[int, int] = {k: 0 for k in classes}
    want = len(classes) * p.per_class if classes else MAX_CLASSES * p.per_class
    for batch in ds.batches(net, p.batch_size):
        if p.by_label:
            rows, ks = [], []
            for i, lab in enumerate(batch.labels.tolist()):
                if lab not in counts and not classes and len(counts) < MAX_CLASSES and lab >= 0:
                    counts[lab] = 0
                if lab in counts and counts[lab] < p.per_class:
                    counts[lab] += 1
                    rows.append(i)
                    ks.append(lab)
            if rows:
                yield batch.x[rows], np.asarray(ks, dtype=np.int64), sum(counts.values()) / want
        else:
            take = batch.x[: max(0, p.per_class - counts[classes[0]])]
            for k in classes:
                counts[k] += len(take)
            if len(take):
                for k in classes:
                    yield take, np.full(len(take), k, dtype=np.int64), sum(counts.values()) / want
        if sum(counts.values()) >= want or (classes and all(c >= p.per_class for c in counts.values())):
            return


# ---------------------------------------------------------------------------------------------------- the run


@dataclass
class CAVBank:
    """Every CAV of a run: per layer a (rows, D) matrix; rows c*runs + i are concept c against random set R_i,
    rows m*runs + i are the null's random set R'_i against R_i. `acc` (m+1, layers, runs): held-out accuracies."""

    concepts: list[str]
    layers: list[str]
    runs: int
    vectors: dict[str, np.ndarray]
    acc: np.ndarray
    sources: list[str]


def random_seed(seed: int, i: int) -> int:
    """The seed of random set i (0 = the null's reference set) of a run with `seed`."""
    return seed * 1_000_003 + 7919 * (i + 1)


def concept_seed(seed: int, c: int, i: int = 0) -> int:
    """The seed of the c-th concept's sample for CAV i of a run with `seed`. Every CAV draws its own sample of the
    concept (packaged sets are generated afresh, a folder larger than `set_size` is subsampled), so the test asks
    whether the concept's direction matters, not one sample's quirks: a fixed sample against varying random sets
    has its own consistent direction, and even a fixed set of random images then looks "significant"."""
    return seed * 1_000_003 + 1009 * c + i


def tcav_scores(
    net: Backbone, layer: str, x: np.ndarray, target: int, cavs: np.ndarray, backend: str = "auto"
) -> np.ndarray:
    """TCAV scores (n_cavs,) of class `target` on the preprocessed inputs x (N,C,H,W) for CAVs (n_cavs, D) at
    `layer`: the fraction of inputs whose directional derivative along each CAV is positive."""
    acts = runner(net, [layer], backend=backend).run(x)[layer]
    g = layer_gradients(net, layer, x, np.asarray(acts, dtype=np.float32), np.full(len(x), target))
    return sign_scores(g, cavs) / max(len(x), 1)


def build_cavs(net: Backbone, p: TCAVParams, layers: list[str], names: list[str], obs: Observer) -> CAVBank:
    """Activations of every concept and random set through the runner, then the CAVs (see CAVBank). Each null CAV
    pairs two random sets of its own (R'_i against R_i), so the null scores are independent draws as the t-test
    assumes; one fixed random "concept" against every R_i (Captum's habit) makes them share its quirks."""
    m, runs = len(names), p.runs
    steps = 2 * runs + m

    def stop_here() -> None:  # between sets: a Stop ends the run within one set's forward passes
        if obs.should_stop():
            raise BadInput(
                "tcav: stopped while building the concept vectors, before any class input was scored"
            )

    rand = []
    for i in range(runs):
        stop_here()
        x = random_set(net, p.random, p.set_size, seed=random_seed(p.seed, i))
        rand.append(flat_activations(net, layers, x, p.backend))
        obs.progress((i + 1) / steps, f"random set {i + 1}/{runs}")
    rows: dict[str, list[np.ndarray]] = {n: [] for n in layers}
    acc = np.zeros((m + 1, len(layers), runs))
    sources = []
    for c, name in enumerate(names):
        per_run: list[dict[str, np.ndarray]] = []
        for i in range(runs):
            stop_here()
            cs = concept_set(net, name, p.set_size, seed=concept_seed(p.seed, c, i), pool=p.random)
            per_run.append(flat_activations(net, layers, cs.x, p.backend))
        sources.append(cs.source)
        for li, layer in enumerate(layers):
            for i in range(runs):
                v, acc[c, li, i] = fit_cav(per_run[i][layer], rand[i][layer], p.cav, seed=p.seed + i)
                rows[layer].append(v)
        obs.progress((runs + c + 1) / steps, f"CAVs of {name}")
    for i in range(runs):
        stop_here()
        x = random_set(net, p.random, p.set_size, seed=random_seed(p.seed, runs + i))
        pos = flat_activations(net, layers, x, p.backend)
        for li, layer in enumerate(layers):
            v, acc[m, li, i] = fit_cav(pos[layer], rand[i][layer], p.cav, seed=p.seed + i)
            rows[layer].append(v)
        obs.progress((runs + m + i + 1) / steps, f"random CAV {i + 1}/{runs}")
    vectors = {
        n: np.stack(rows[n]) for n in layers
    }  # concept c run i at row c*runs + i, the null's at m*runs + i
    return CAVBank(names, layers, runs, vectors, acc, sources)


def score_stream(
    net: Backbone, p: TCAVParams, bank: CAVBank, classes: list[int], obs: Observer
) -> tuple[dict[int, np.ndarray], bool]:
    """Positive-derivative counts per class: {k: (layers, rows, ) counts and, in the last column, the number of
    class-k inputs}, streamed over the class inputs; and whether the observer stopped the run early."""
    counts: dict[int, np.ndarray] = {}
    n_rows = len(next(iter(bank.vectors.values())))
    r = runner(net, bank.layers, backend=p.backend)
    for x, ks, frac in class_batches(net, p, classes):
        if obs.should_stop():
            return counts, True
        acts = r.run(x)
        for li, layer in enumerate(bank.layers):
            g = layer_gradients(net, layer, x, np.asarray(acts[layer], dtype=np.float32), ks)
            for k in np.unique(ks).tolist():
                sel = ks == k
                c = counts.setdefault(k, np.zeros((len(bank.layers), n_rows + 1), dtype=np.int64))
                c[li, :n_rows] += sign_scores(g[sel], bank.vectors[layer])
                c[li, n_rows] += int(sel.sum())
        obs.progress(frac, f"class inputs: {int(sum(c[0, -1] for c in counts.values()))}")
    return counts, False


def ttest(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of Student's t-test of equal means (scipy.stats.ttest_ind); two constant samples give 1
    when they are equal and 0 when they differ (no variance to weigh the difference against)."""
    from scipy.stats import ttest_ind

    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 1.0 if a[0] == b[0] else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", RuntimeWarning
        )  # nearly constant samples: scipy warns, the p-value stands
        return float(ttest_ind(a, b).pvalue)


def significance(
    bank: CAVBank, counts: dict[int, np.ndarray], alpha: float
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The table (one row per concept, layer, class: mean score and std over runs, the random null's mean and std,
    p, Bonferroni p_adj over the m concepts, significant, mean CAV accuracy) and the scores (m+1, L, K, runs)."""
    m, runs = len(bank.concepts), bank.runs
    ks = sorted(counts)
    scores = np.zeros((m + 1, len(bank.layers), len(ks), runs))
    for j, k in enumerate(ks):
        c = counts[k]
        scores[:, :, j] = (
            (c[:, :-1] / np.maximum(c[:, -1:], 1)).reshape(len(bank.layers), m + 1, runs).transpose(1, 0, 2)
        )
    table = []
    for ci, name in enumerate(bank.concepts):
        for li, layer in enumerate(bank.layers):
            for j, k in enumerate(ks):
                s, r = scores[ci, li, j], scores[m, li, j]
                pv = ttest(s, r)
                p_adj = min(1.0, pv * m)
                table.append(
                    dict(
                        zip(
                            COLUMNS,
                            (
                                name,
                                layer,
                                k,
                                float(s.mean()),
                                float(s.std()),
                                float(r.mean()),
                                float(r.std()),
                                pv,
                                p_adj,
                                bool(p_adj < alpha),
                                float(bank.acc[ci, li].mean()),
                            ),
                        )
                    )
                )
    return table, scores


def tcav_chart(
    table: list[dict[str, Any]],
    concepts: list[str],
    layers: list[str],
    classes: list[int],
    labels: list[str] | None,
) -> Image.Image:
    """Bars of mean TCAV score per class (one panel per layer, one colour per concept), whiskers of one std, the
    random null's mean as a grey tick, and a star over significant bars."""
    from PIL import ImageDraw

    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    bw, gap, ph, top = 10, 12, 150, 18
    group = bw * len(concepts) + gap
    width = max(240, 40 + group * len(classes))
    img = Image.new("RGB", (width, (ph + top + 30) * len(layers) + 16 * len(concepts)), "white")
    d = ImageDraw.Draw(img)
    rows = {(r["concept"], r["layer"], r["class"]): r for r in table}
    for li, layer in enumerate(layers):
        y0 = li * (ph + top + 30) + top
        d.text((4, y0 - 14), f"layer {layer}", fill="black")
        d.line([(30, y0 + ph), (width - 4, y0 + ph)], fill="black")
        d.line([(30, y0 + ph // 2), (width - 4, y0 + ph // 2)], fill=(220, 220, 220))
        for j, k in enumerate(classes):
            x0 = 34 + j * group
            name = labels[k] if labels and k < len(labels) else str(k)
            d.text((x0, y0 + ph + 2), name[: max(3, group // 6)], fill="black")
            for ci, c in enumerate(concepts):
                r = rows.get((c, layer, k))
                if r is None:
                    continue
                x = x0 + ci * bw
                h = int(r["score"] * ph)
                d.rectangle([x, y0 + ph - h, x + bw - 2, y0 + ph], fill=palette[ci % len(palette)])
                e = int(r["std"] * ph)
                d.line([(x + bw // 2 - 1, y0 + ph - h - e), (x + bw // 2 - 1, y0 + ph - h + e)], fill="black")
                ry = y0 + ph - int(r["random"] * ph)
                d.line([(x, ry), (x + bw - 2, ry)], fill=(128, 128, 128))
                if r["significant"]:
                    d.text((x, y0 + ph - h - e - 12), "*", fill="black")
    for ci, c in enumerate(concepts):
        y = img.height - 16 * (len(concepts) - ci)
        d.rectangle([6, y + 2, 14, y + 10], fill=palette[ci % len(palette)])
        d.text((20, y), c, fill="black")
    return img


@register(
    "tcav",
    "concepts",
    TCAVParams,
    paper="Kim et al. 2018, Interpretability Beyond Feature Attribution: TCAV; Schmalwasser et al. 2025, FastCAV",
    needs_image=False,
    needs_grad=True,
    stoppable=True,
    heavy=True,
)
def run(net: Backbone, img: Any, p: TCAVParams, obs: Observer) -> Result:
    """TCAV scores of concept sets for classes at layers, with t-tests against random CAVs and CAV accuracies."""
    t0 = time.perf_counter()
    layers = parse_layers(net, p.layers)
    classes = parse_classes(net, p.classes)
    names = [s.strip() for s in p.concepts.split(",") if s.strip()]
    if not names:
        raise BadInput(
            "tcav: concepts: name at least one concept set (packaged: " + ", ".join(PACKAGED) + ")"
        )
    if len(set(names)) != len(names):
        raise BadInput(f"tcav: concepts are listed twice: {p.concepts!r}")
    bank = build_cavs(net, p, layers, names, obs.span(0.0, 0.4))
    counts, stopped = score_stream(net, p, bank, classes, obs.span(0.4, 1.0))
    if not counts:
        if stopped:
            raise BadInput("tcav: stopped before any class input was scored")
        raise BadInput(f"tcav: inputs {p.inputs!r} hold no images of the classes asked for")
    table, scores = significance(bank, counts, p.alpha)
    extras: dict[str, Any] = {
        "table": table,
        "columns": list(COLUMNS),
        "concepts": names,
        "layers": layers,
        "classes": sorted(counts),
        "inputs_per_class": {int(k): int(c[0, -1]) for k, c in counts.items()},
        "scores": scores.astype(np.float32),
        "cav_accuracy": bank.acc.astype(np.float32),
        "sources": bank.sources,
    }
    extras["image"] = tcav_chart(table, names, layers, sorted(counts), getattr(net, "labels", None))
    meta = {
        "stopped": stopped,
        "backend": runner(net, layers, backend=p.backend).backend,
        "tcav_s": time.perf_counter() - t0,
    }
    data = np.asarray([[r["score"], r["std"]] for r in table], dtype=np.float32)
    return Result("points", data, meta, None, extras)
