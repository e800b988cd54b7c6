"""Evaluation of explanations: metrics that judge a map produced by any technique (not techniques themselves).

`faithfulness`: deletion/insertion curves and AUCs beside seeded random maps, batched through runner sweeps.
`sanity`: the cascading model-randomisation check (does the map depend on the weights?).
`catalogue`: every metric (faithfulness, localisation, randomisation, robustness, complexity) declared once.
"""

from .catalogue import FAMILIES, METRICS, EvalBatch, Metric, get_metric, list_metrics, load_all, metric
from .faithfulness import (
    BASELINES,
    DIRECTION,
    MAX_STEPS,
    deletion_insertion,
    deletion_insertion_many,
    map_array,
    random_baseline_map,
)
from .sanity import INSENSITIVE, SANITY_THRESHOLD, compare_maps, layer_groups, sanity_check

__all__ = [
    "FAMILIES",
    "METRICS",
    "EvalBatch",
    "Metric",
    "get_metric",
    "list_metrics",
    "load_all",
    "metric",
    "BASELINES",
    "DIRECTION",
    "INSENSITIVE",
    "MAX_STEPS",
    "SANITY_THRESHOLD",
    "compare_maps",
    "deletion_insertion",
    "deletion_insertion_many",
    "layer_groups",
    "map_array",
    "random_baseline_map",
    "sanity_check",
]
