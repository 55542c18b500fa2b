"""Text-to-audio retrieval metrics of DCASE 2022 Task 6b: R@1, R@5, R@10, mAP@10 and jackknife intervals.

Pure numpy and free of files, so fine-tuning can score its validation epochs with the same code as `bench clotho`.
Every query has exactly one relevant clip, so each metric is a mean over queries of a per-query value computed
from the rank of that clip: hit@k is 1 when rank <= k, AP@10 is 1/rank when rank <= 10, else 0.
"""

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

METRICS = ("R1", "R5", "R10", "mAP10")
CUTOFF = 10  # the challenge ranks ten clips per caption; nothing below that counts
_ROW_CHUNK = 1024  # queries compared at once, so the (chunk, clips) boolean stays small on the development split


@dataclass(frozen=True)
class BenchResult:
    """Point estimates, jackknife intervals and the number of queries behind them."""

    metrics: dict[str, float]  # {"R1", "R5", "R10", "mAP10"}
    ci: dict[str, tuple[float, float]]  # same keys, (low, high)
    n_queries: int

    def as_dict(self) -> dict[str, float | int | list[float]]:
        """Flat JSON-ready form: R1, R1_ci: [lo, hi], ..., n_queries."""
        out: dict[str, float | int | list[float]] = {}
        for name in METRICS:
            out[name] = self.metrics[name]
            out[f"{name}_ci"] = list(self.ci[name])
        out["n_queries"] = self.n_queries
        return out


def ranks_from_scores(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of each query's relevant clip among all clips, best score first; ties go to the lower clip index."""
    scores = np.asarray(scores)  # (Q, A)
    relevant = np.asarray(relevant, dtype=np.int64)  # (Q,)
    if scores.ndim != 2 or relevant.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (Q, A) and relevant (Q,), got {scores.shape} and {relevant.shape}")
    if relevant.size and (relevant.min() < 0 or relevant.max() >= scores.shape[1]):
        raise ValueError("relevant holds a clip index outside the score matrix")
    # A NaN score must rank last, not first: every comparison with NaN is False.
    scores = np.where(np.isnan(scores), -np.inf, scores)
    clip_index = np.arange(scores.shape[1])
    ranks = np.empty(scores.shape[0], dtype=np.int64)
    for start in range(0, scores.shape[0], _ROW_CHUNK):
        block = scores[start : start + _ROW_CHUNK]  # (q, A)
        rel = relevant[start : start + _ROW_CHUNK]  # (q,)
        target = block[np.arange(len(rel)), rel][:, None]  # (q, 1)
        # Same order as a stable descending sort (write_submission), so a written submission scores the same.
        ahead = (block > target) | ((block == target) & (clip_index[None, :] < rel[:, None]))
        ranks[start : start + _ROW_CHUNK] = 1 + ahead.sum(axis=1)
    return ranks


def top_k(scores: np.ndarray, k: int = CUTOFF) -> np.ndarray:
    """Indices of the k best clips per query, best first, ties broken as in ranks_from_scores."""
    scores = np.asarray(scores)  # (Q, A)
    scores = np.where(np.isnan(scores), -np.inf, scores)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (Q, min(k, A))


def per_query(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric's per-query values (0/1 hits, reciprocal ranks within the cutoff); their means are the metrics."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    if ranks.min() < 1:
        raise ValueError("ranks are 1-based; found a rank below 1")
    ranks = ranks.astype(np.float64)
    return {
        "R1": (ranks <= 1).astype(np.float64),
        "R5": (ranks <= 5).astype(np.float64),
        "R10": (ranks <= 10).astype(np.float64),
        "mAP10": np.where(ranks <= CUTOFF, 1.0 / ranks, 0.0),
    }


def retrieval_metrics(ranks: np.ndarray) -> dict[str, float]:
    """R@1, R@5, R@10 and mAP@10 from the 1-based ranks of the relevant clips."""
    return {name: float(values.mean()) for name, values in per_query(ranks).items()}


def _jackknife_mean(values: np.ndarray, z: float) -> tuple[float, float]:
    """Interval of the official script (astropy's jackknife_stats with np.mean): bias-corrected estimate +- z * se."""
    n = values.size
    if n < 2:
        # One query leaves nothing to resample: no spread can be measured, so the interval is the point.
        return float(values.mean()), float(values.mean())
    stat = values.mean()
    leave_one_out = (values.sum() - values) / (n - 1)  # (n,) the mean with query i left out
    loo_mean = leave_one_out.mean()
    bias = (n - 1) * (loo_mean - stat)
    std_err = np.sqrt((n - 1) * np.mean((leave_one_out - loo_mean) ** 2))
    estimate = stat - bias
    return float(estimate - z * std_err), float(estimate + z * std_err)


def jackknife_ci(ranks: np.ndarray, alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """A (1 - alpha) confidence interval for each metric by jackknife resampling over queries."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0)  # 1.959964 for 95 %, = sqrt(2) * erfinv(0.95)
    return {name: _jackknife_mean(values, z) for name, values in per_query(ranks).items()}


def summarize(ranks: np.ndarray, alpha: float = 0.05) -> BenchResult:
    """Metrics, intervals and query count in one record."""
    ranks = np.asarray(ranks)
    return BenchResult(metrics=retrieval_metrics(ranks), ci=jackknife_ci(ranks, alpha), n_queries=int(ranks.size))
