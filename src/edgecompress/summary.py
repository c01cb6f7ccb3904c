"""Run summary (final artifact vs the baseline) and target checks."""

from __future__ import annotations

import math
from typing import Any

from edgecompress.recipe import Targets

NOISE_SE = 3.0  # two accuracies closer than this many standard errors of their difference are the same


def accuracy_noise_points(a: float, b: float, samples: int) -> float:
    """``NOISE_SE`` standard errors of the difference between accuracies ``a`` and ``b`` (fractions) measured on
    ``samples`` test samples, in percentage points."""
    return NOISE_SE * 100 * math.sqrt((a * (1 - a) + b * (1 - b)) / samples)


def chance_warning(accuracy: float, chance: float, samples: int) -> str | None:
    """Why a baseline at chance level makes the run meaningless (None when it is clearly above chance)."""
    if 100 * (accuracy - chance) > accuracy_noise_points(accuracy, chance, samples):
        return None
    return (f"the baseline is at chance level: {100 * accuracy:.1f}% on {samples:,} test samples, where always "
            f"answering the most frequent class scores {100 * chance:.1f}%. It is untrained (or does not fit this "
            "data), so the accuracy drop says nothing. Train it first (edgecompress.train(model, task, epochs=5, "
            "lr=0.05), or `pretrain:` under `model:` in the recipe) or load its trained weights")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def summarize(history: list[dict[str, Any]], metric: str = "accuracy", higher_is_better: bool = True
              ) -> dict[str, Any]:
    """Final vs baseline; ``accuracy_drop_points`` is the drop of the task's headline ``metric`` (a fraction where
    higher is better: accuracy, or top-1 agreement with the original model on unlabeled data) in percentage
    points; ``metric_change_pct`` is the relative change of any metric (perplexity, say). ``latency_speedup`` is the
    median ratio of the interleaved rounds (``latency_speedup_spread``: its quartiles, and whether it is measurable)
    where the run timed them, else the ratio of the two p50 latencies."""
    base, final = history[0]["metrics"], history[-1]["metrics"]
    spread = final.get("speedup") if isinstance(final.get("speedup"), dict) else None  # interleaved with baseline
    drop = change = None
    if metric in base and metric in final:
        drop = round((base[metric] - final[metric]) * 100, 3) if higher_is_better else None
        change = round((final[metric] / base[metric] - 1) * 100, 3) if base[metric] else None
    return {
        "metric": metric,
        "metric_change_pct": change,
        "size_reduction": _ratio(base.get("size_bytes"), final.get("size_bytes")),
        "macs_reduction": _ratio(base.get("macs"), final.get("macs")),
        "params_reduction": _ratio(base.get("params"), final.get("params")),
        "accuracy_drop_points": drop,
        "latency_speedup": spread["median"] if spread else _ratio(base.get("latency_p50_ms"),
                                                                  final.get("latency_p50_ms")),
        "latency_speedup_spread": spread,
        "total_seconds": round(sum(h["metrics"].get("stage_seconds", 0.0) for h in history), 2),
        "compression_cost": compression_cost(history),
    }


_COST_KEYS = ("wall_seconds", "cpu_seconds", "flops_forward", "flops_backward", "flops_solve", "labels_used",
              "unlabeled_samples")


def compression_cost(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The stages' reports added up (the baseline's own training is left out): what compression cost."""
    reports = [h["report"] for h in history[1:] if isinstance(h.get("report"), dict)]
    total = {key: round(sum(r.get(key, 0) for r in reports), 4) for key in _COST_KEYS}
    total["flops"] = total["flops_forward"] + total["flops_backward"] + total["flops_solve"]
    return total


_CHECKS = {  # target -> (summary or final-metric key, passes(got, wanted))
    "max_accuracy_drop": ("accuracy_drop_points", lambda got, wanted: got <= wanted),
    "min_size_reduction": ("size_reduction", lambda got, wanted: got >= wanted),
    "min_macs_reduction": ("macs_reduction", lambda got, wanted: got >= wanted),
    "max_latency_ms": ("latency_p50_ms", lambda got, wanted: got <= wanted),
    "max_perplexity_increase_pct": ("metric_change_pct", lambda got, wanted: got <= wanted),
}


def checks(history: list[dict[str, Any]], targets: Targets, metric: str = "accuracy",
           higher_is_better: bool = True, samples: int | None = None) -> list[dict[str, Any]]:
    """Each target that is set, with what the run got and whether it passed. With ``samples`` (the size of the test
    split), an accuracy gain beyond noise is not a pass: ``passed`` is None and ``note`` says the baseline was not
    trained. ``max_accuracy_drop`` is left out where lower is better (perplexity: ``max_perplexity_increase_pct``
    judges it; the pipeline refuses that target on other metrics)."""
    summary = summarize(history, metric, higher_is_better)
    values = {**history[-1]["metrics"], **summary}
    out = []
    for target, wanted in targets.model_dump().items():
        if wanted is None or (target == "max_accuracy_drop" and not higher_is_better):
            continue
        key, passes = _CHECKS[target]
        got = values.get(key)
        check = {"target": target, "wanted": wanted, "got": got, "passed": got is not None and passes(got, wanted)}
        if target == "max_accuracy_drop" and metric == "accuracy" and samples and got is not None and got < 0:
            noise = accuracy_noise_points(history[0]["metrics"][metric], history[-1]["metrics"][metric], samples)
            if -got > noise:
                check.update(passed=None, note=f"the baseline was not trained: the final model is {-got:.1f} points "
                                               f"more accurate, beyond the noise of {samples:,} test samples "
                                               f"(±{noise:.1f} points)")
        out.append(check)
    return out
