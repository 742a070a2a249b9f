"""Which differences between methods are real: paired comparisons with a baseline, a leaderboard with
the Friedman / Nemenyi tests, and the critical-difference diagram.

Everything here is a pure function of a tidy frame with the columns ``FRAME_COLUMNS`` (``method``,
``dataset``, ``seed``, ``value``), one row per (method, dataset, seed), so that every study feeds the
same statistics whatever its metric: base-to-new's per-seed H (``harmonic_frame`` builds it), the
few-shot accuracy at one shot count, transfer's target accuracy.

Why pairs are (dataset, seed): the same seed gives two methods the same few-shot draw, so the difference
on it is paired and the seed-to-seed swing that both share cancels. A method without seeds (zero-shot
CLIP: ``seed`` empty) has one value per dataset, which pairs with every seed of the other method.

Choices the specification leaves open, made here once:

* Fewer than two pairs on a dataset: no interval and no p-value, so the verdict is ``within noise``: one
  seed cannot show that a difference is more than that seed's luck.
* Every pair on a dataset differing by the same amount (zero variance, where ``ttest_rel`` returns NaN):
  a constant non-zero difference is a perfectly consistent win or loss, so its p-value is 0 and its
  interval the single point; a constant zero difference is a tie, p-value 1 (as the Wilcoxon rule of the
  Average row). The interval is what decides the verdict either way.
* A method with no pair on any dataset (its seeds and the baseline's disjoint, or no common dataset) has
  no row at all: an Average of nothing is neither a difference nor "within noise" (``unpaired`` names it).
* The Average row's bootstrap needs at least two values to resample: one dataset with one pair gets no
  interval (``within noise``).
* The leaderboard ranks only methods with a value on every dataset of the frame: a mean rank over other
  datasets is not comparable. The others are left out and named in the leaderboard's notes.
* The Nemenyi post-hoc is read only when the Friedman test rejects at ``ALPHA`` (Demšar 2006): when it
  does not, no two methods are shown apart and all share one group. Two methods (scipy's Friedman test
  needs three) are decided by the post-hoc alone.
"""

from __future__ import annotations

import dataclasses
import re
import string

import numpy as np
import pandas as pd
from scipy import stats

from harness.report.tables import AVERAGE, harmonic

FRAME_COLUMNS = ("method", "dataset", "seed", "value")
COLUMNS = (
    "method",
    "baseline",
    "metric",
    "dataset",
    "n_pairs",
    "mean_delta",
    "ci_low",
    "ci_high",
    "p_value",
    "verdict",
)
LEADERBOARD_COLUMNS = ("rank", "method", "average", "mean_rank", "groups")
BETTER = "better"
WORSE = "worse"
WITHIN_NOISE = "within noise"
#: The study's headline metric: H (base-to-new), accuracy (transfer) or accuracy@K (few-shot, K shots).
METRIC_PATTERN = re.compile(r"H|accuracy(@[1-9][0-9]*)?")
CONFIDENCE = 0.95
ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
#: The Friedman test's chi-square needs a few blocks; below three datasets it says nothing.
MIN_DATASETS = 3
MIN_METHODS = 2
# Differences and seed means are rounded here before any test or rank: subtracting or averaging percentages
# leaves float noise (1e-14), which must not turn an exact tie into a tiny "consistent" win or a rank.
# No metric is measured this finely.
DIGITS = 9
FIGURE_NAME = "figure_critical_difference"


def _check_frame(frame: pd.DataFrame, what: str = "comparison frame") -> pd.DataFrame:
    """The one gate of every function here: the columns, one row per (method, dataset, seed), finite
    values, and per (method, dataset) either seeds or a single seedless value, never both."""
    missing = [c for c in FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what}: missing column(s) {missing}; expected columns {list(FRAME_COLUMNS)} "
            "(one row per method, dataset and seed; seed empty for a method without seeds)"
        )
    frame = frame.loc[:, list(FRAME_COLUMNS)].reset_index(drop=True)
    for column in ("method", "dataset"):
        empty = frame[column].isna()
        if empty.any():
            raise ValueError(
                f"{what}: column {column!r} is empty in row {int(empty.idxmax())}; name every row's {column}"
            )
    values = pd.to_numeric(frame["value"], errors="coerce")
    bad = ~np.isfinite(values.to_numpy(dtype=float))
    if bad.any():
        row = frame.loc[int(np.argmax(bad))]
        raise ValueError(
            f"{what}: value {row['value']!r} of {row['method']} on {row['dataset']} (seed {row['seed']}) is not a "
            "finite number; drop the row or give the measured value"
        )
    frame["value"] = values.astype(float)
    key = frame[["method", "dataset"]].assign(seed=frame["seed"].astype(object).where(frame["seed"].notna(), None))
    duplicated = key.duplicated(keep=False)
    if duplicated.any():
        row = key[duplicated].iloc[0]
        raise ValueError(
            f"{what}: {row['method']} on {row['dataset']} has more than one row for seed {row['seed']}; "
            "expected one row per method, dataset and seed (average repeats before comparing)"
        )
    seedless = frame["seed"].isna()
    mixed = frame.assign(seedless=seedless).groupby(["method", "dataset"], sort=False)["seedless"].agg(["any", "all"])
    mixed = mixed[mixed["any"] & ~mixed["all"]]
    if len(mixed):
        method, dataset = mixed.index[0]
        raise ValueError(
            f"{what}: {method} on {dataset} has rows with a seed and a row without one; a method either has "
            "seeds or a single seedless value per dataset"
        )
    return frame


def _check_metric(metric: str) -> None:
    if not isinstance(metric, str) or not METRIC_PATTERN.fullmatch(metric):
        raise ValueError(f"metric {metric!r}: expected 'H', 'accuracy' or 'accuracy@K' with K the shot count")


def _values(frame: pd.DataFrame) -> dict:
    """{(method, dataset): {seed: value}}, the key ``None`` for a seedless method's one value."""
    out: dict = {}
    for method, dataset, seed, value in frame.itertuples(index=False):
        out.setdefault((method, dataset), {})[None if pd.isna(seed) else seed] = value
    return out


def _pairs(method_values: dict, baseline_values: dict) -> tuple[np.ndarray, np.ndarray]:
    """The paired (method, baseline) values on one dataset: common seeds, or a seedless side's one
    value repeated against every seed of the other."""
    if None in method_values and None in baseline_values:
        seeds = [None]
    elif None in method_values:
        seeds = sorted(baseline_values)
    elif None in baseline_values:
        seeds = sorted(method_values)
    else:
        seeds = sorted(set(method_values) & set(baseline_values))
    pick = lambda values, seed: values[None] if None in values else values[seed]
    return (
        np.array([pick(method_values, s) for s in seeds], dtype=float),
        np.array([pick(baseline_values, s) for s in seeds], dtype=float),
    )


def verdict(ci_low: float, ci_high: float) -> str:
    """``better`` / ``worse`` only when the whole interval is on one side of zero; no interval (one seed)
    cannot show that a difference is real."""
    if ci_low > 0:
        return BETTER
    if ci_high < 0:
        return WORSE
    return WITHIN_NOISE


def _mean(deltas: np.ndarray) -> float:
    """A dataset's mean difference, rounded as the differences are: the mean of a tie (0.1, 0.2, -0.3) is
    0, not 2e-17, which the Wilcoxon test would count as a win instead of dropping as a zero."""
    return float(np.round(deltas.mean(), DIGITS))


def _paired_test(method: np.ndarray, baseline: np.ndarray) -> tuple[float, float, float, float]:
    """(mean_delta, ci_low, ci_high, p_value) of one dataset's pairs: the Student-t interval of the mean
    difference and the paired t-test (see the module's docstring for n < 2 and zero variance)."""
    deltas = np.round(method - baseline, DIGITS)
    n = len(deltas)
    mean = _mean(deltas)
    if n < 2:
        return mean, np.nan, np.nan, np.nan
    if np.all(deltas == deltas[0]):
        return mean, mean, mean, (0.0 if mean != 0 else 1.0)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * deltas.std(ddof=1) / np.sqrt(n)
    p_value = float(stats.ttest_rel(method, baseline).pvalue)
    return mean, mean - half, mean + half, p_value


def bootstrap_interval(deltas: list[np.ndarray]) -> tuple[float, float]:
    """The percentile interval (``CONFIDENCE``) of the mean over datasets of each dataset's mean difference,
    resampling datasets and, within each drawn dataset, its pairs, both with replacement.

    Vectorised, and the draws are fixed so that any implementation can repeat them: one generator
    ``numpy.random.default_rng(BOOTSTRAP_SEED)``, first ``integers(0, D, size=(B, D))`` (the datasets
    drawn), then ``random((B, D, max_n))``; pair j of drawn dataset d (with n_d pairs) is pair
    ``floor(u * n_d)`` of it for the first n_d uniforms u of that draw.
    """
    counts = np.array([len(d) for d in deltas])
    if counts.sum() < 2:
        return np.nan, np.nan
    padded = np.zeros((len(deltas), counts.max()))
    for i, d in enumerate(deltas):
        padded[i, : len(d)] = d
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    picks = rng.integers(0, len(deltas), size=(BOOTSTRAP_RESAMPLES, len(deltas)))
    uniforms = rng.random((BOOTSTRAP_RESAMPLES, len(deltas), counts.max()))
    drawn_counts = counts[picks][..., None]
    drawn = padded[picks[..., None], (uniforms * drawn_counts).astype(int)]
    used = np.arange(counts.max()) < drawn_counts
    means = ((drawn * used).sum(axis=-1) / drawn_counts[..., 0]).mean(axis=-1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _wilcoxon(dataset_means: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value with scipy's defaults; 1.0 when every difference is zero
    (scipy has no answer then)."""
    if np.all(dataset_means == 0):
        return 1.0
    return float(stats.wilcoxon(dataset_means).pvalue)


def comparison(frame: pd.DataFrame, baseline: str, metric: str) -> pd.DataFrame:
    """Every method against ``baseline``: one row per method and dataset with pairs, then the method's
    ``AVERAGE`` row over those datasets; the columns ``COLUMNS``, methods and datasets in the frame's order.
    A method with no pair at all has no row (``unpaired``).

    Per dataset the Student-t interval and the paired t-test over seeds; on the Average the Wilcoxon
    signed-rank test over datasets (few datasets, no normality to assume) and a bootstrap interval that
    carries both sources of noise, which dataset and which seed.
    """
    frame = _check_frame(frame)
    _check_metric(metric)
    methods = list(dict.fromkeys(frame["method"]))
    if baseline not in methods:
        raise ValueError(f"baseline {baseline!r} has no rows; expected one of the frame's methods {methods}")
    datasets = list(dict.fromkeys(frame["dataset"]))
    values = _values(frame)
    rows = []
    for method in methods:
        if method == baseline:
            continue
        deltas = []
        for dataset in datasets:
            if (method, dataset) not in values or (baseline, dataset) not in values:
                continue
            ours, theirs = _pairs(values[method, dataset], values[baseline, dataset])
            if not len(ours):
                continue
            mean, low, high, p_value = _paired_test(ours, theirs)
            deltas.append(np.round(ours - theirs, DIGITS))
            rows.append((method, baseline, metric, dataset, len(ours), mean, low, high, p_value, verdict(low, high)))
        if not deltas:  # nothing measured against the baseline: no row could say "within noise" of it
            continue
        means = np.array([_mean(d) for d in deltas])
        low, high = bootstrap_interval(deltas)
        mean, p_value = float(means.mean()), _wilcoxon(means)
        rows.append((method, baseline, metric, AVERAGE, len(deltas), mean, low, high, p_value, verdict(low, high)))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.astype({"n_pairs": int, **{c: float for c in ("mean_delta", "ci_low", "ci_high", "p_value")}})


def unpaired(frame: pd.DataFrame, table: pd.DataFrame, baseline: str) -> list:
    """The methods of ``frame`` that its ``comparison`` with ``baseline`` left out: not one (dataset, seed)
    pair with the baseline."""
    compared = set(table["method"]) | {baseline}
    return [m for m in dict.fromkeys(frame["method"]) if m not in compared]


def harmonic_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Base-to-new's tidy frame: per (method, dataset, seed) the H of that seed's base and new accuracy
    (not the H of the averages: the pair is the seed). From columns method, dataset, seed, base, new;
    a seed missing its base or new accuracy has no H and no row."""
    missing = [c for c in ("method", "dataset", "seed", "base", "new") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"base-to-new frame: missing column(s) {missing}; expected method, dataset, seed, base, new "
            "(one row per method, dataset and seed)"
        )
    rows = [
        (method, dataset, seed, harmonic(float(base), float(new)))
        for method, dataset, seed, base, new in frame[["method", "dataset", "seed", "base", "new"]].itertuples(
            index=False
        )
        if not (pd.isna(base) or pd.isna(new))
    ]
    return pd.DataFrame(rows, columns=list(FRAME_COLUMNS))


@dataclasses.dataclass(frozen=True)
class Leaderboard:
    """The ranked methods (``table``, columns ``LEADERBOARD_COLUMNS``: rank by the headline average, the
    mean rank over datasets with rank 1 the best and ties averaged, and ``groups``: methods sharing a
    letter are not distinguishable at ``ALPHA``), the tests behind the groups, and what was left out."""

    table: pd.DataFrame
    datasets: tuple
    friedman_statistic: float
    friedman_p: float
    #: Nemenyi's critical difference of mean ranks at ALPHA (the diagram's CD bar)
    critical_difference: float
    #: pairwise p-values as read: Nemenyi's, or all 1.0 when the Friedman test does not reject
    p_values: pd.DataFrame | None
    #: the groups of methods not distinguishable, best first (the diagram's bars)
    groups: tuple
    #: methods left out -> the datasets they have no value on
    excluded: dict
    #: why no test was run (too few datasets or methods), else None; the diagram says the same
    untested: str | None
    notes: tuple


def _groups(order: list, p_values: pd.DataFrame) -> list[list]:
    """The maximal sets of methods no two of which differ (p >= ALPHA, as the diagram's library reads it).
    Nemenyi's p falls with the distance of two mean ranks, so these are the maximal runs of methods
    adjacent in rank order whose two ends do not differ."""
    ends = []
    for first in range(len(order)):
        last = first
        while last + 1 < len(order) and p_values.loc[order[first], order[last + 1]] >= ALPHA:
            last += 1
        if not ends or last > ends[-1][1]:
            ends.append((first, last))
    return [order[first : last + 1] for first, last in ends]


def leaderboard(frame: pd.DataFrame) -> Leaderboard:
    """Rank the methods by the headline average (mean over datasets of each dataset's mean over seeds),
    with their mean rank over datasets and the Friedman test; the Nemenyi post-hoc (scikit-posthocs, the
    maintained implementation the diagram also comes from) says which are not distinguishable."""
    import scikit_posthocs

    frame = _check_frame(frame)
    datasets = list(dict.fromkeys(frame["dataset"]))
    means = frame.groupby(["dataset", "method"], sort=False)["value"].mean().round(DIGITS).unstack("method")
    means = means.reindex(index=datasets, columns=list(dict.fromkeys(frame["method"])))
    complete = [m for m in means.columns if means[m].notna().all()]
    excluded = {m: tuple(means.index[means[m].isna()]) for m in means.columns if m not in complete}
    notes = [
        f"{m} is not ranked: no value on {', '.join(map(str, missing))} (ranks compare one set of datasets)"
        for m, missing in excluded.items()
    ]
    means = means[complete]
    ranks = means.rank(axis=1, ascending=False, method="average")
    table = pd.DataFrame({"method": complete, "average": means.mean().to_numpy(), "mean_rank": ranks.mean().to_numpy()})
    table = table.sort_values(["average", "mean_rank", "method"], ascending=[False, True, True], ignore_index=True)
    table.insert(0, "rank", range(1, len(table) + 1))

    k, n = len(complete), len(datasets)
    untested = None
    if k < MIN_METHODS:
        untested = f"ranking needs at least {MIN_METHODS} methods with a value on every dataset, this study has {k}"
    elif n < MIN_DATASETS:
        untested = f"the Friedman test needs at least {MIN_DATASETS} datasets, this study has {n}"
    statistic = p_friedman = critical = np.nan
    p_values, groups = None, []
    if untested is None:
        if k >= 3:
            statistic, p_friedman = map(float, stats.friedmanchisquare(*(means[m].to_numpy() for m in complete)))
        else:
            notes.append("two methods: scipy's Friedman test needs three, the Nemenyi post-hoc alone decides")
        critical = float(
            stats.studentized_range.ppf(1 - ALPHA, k, np.inf) / np.sqrt(2) * np.sqrt(k * (k + 1) / (6 * n))
        )
        # Nemenyi ranks ascending, so it is given the negated values: rank 1 is the best method everywhere.
        p_values = scikit_posthocs.posthoc_nemenyi_friedman(-means.to_numpy())
        p_values.index = p_values.columns = complete
        if p_friedman >= ALPHA:
            notes.append(f"the Friedman test does not reject (p = {p_friedman:.3g}): no two methods are shown apart")
            p_values = pd.DataFrame(1.0, index=complete, columns=complete)
        order = sorted(complete, key=lambda m: (ranks[m].mean(), m))
        groups = _groups(order, p_values)
    else:
        notes.append(f"no test: {untested}")
    letters = {m: "".join(string.ascii_lowercase[i] for i, g in enumerate(groups) if m in g) for m in complete}
    table["groups"] = table["method"].map(letters)
    return Leaderboard(
        table=table[list(LEADERBOARD_COLUMNS)],
        datasets=tuple(datasets),
        friedman_statistic=statistic,
        friedman_p=p_friedman,
        critical_difference=critical,
        p_values=p_values,
        groups=tuple(tuple(g) for g in groups),
        excluded=excluded,
        untested=untested,
        notes=tuple(notes),
    )


def figure_critical_difference(frame: pd.DataFrame, out_dir: str, name: str = FIGURE_NAME):
    """The critical-difference diagram (scikit-posthocs' drawing): methods at their mean rank, a bar
    joining those not distinguishable, written as ``<name>.{png,pdf,csv}``. ``(paths, None)``, or
    ``(None, reason)`` where no test can be run, as the report's other figures."""
    import scikit_posthocs

    from harness.report.figures import _figure, _save, color

    board = leaderboard(frame)
    if board.untested is not None:
        return None, f"no diagram: {board.untested}"
    ranks = board.table.set_index("method")["mean_rank"]
    fig, axes = _figure(1, 1, figsize=(7, 0.6 + 0.35 * len(ranks)))
    ax = axes[0, 0]
    scikit_posthocs.critical_difference_diagram(
        ranks,
        board.p_values,
        alpha=ALPHA,
        ax=ax,
        label_fmt_left="{label} ({rank:.2f})",
        label_fmt_right="({rank:.2f}) {label}",
        color_palette={m: color(m) for m in ranks.index},
    )
    ax.set_title(
        f"Mean rank over {len(board.datasets)} datasets (1 = best), critical difference "
        f"{board.critical_difference:.2f} at α = {ALPHA}: a bar joins methods not distinguishable",
        fontsize=9,
        pad=22,
    )
    plotted = [
        {"method": m, "mean_rank": float(r), "groups": g}
        for m, r, g in board.table[["method", "mean_rank", "groups"]].itertuples(index=False)
    ]
    return _save(fig, out_dir, name, plotted), None
