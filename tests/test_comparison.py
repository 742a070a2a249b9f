"""Which differences are real: each statistic of harness.report.comparison against a computation written
here from scipy / numpy / scikit-posthocs directly, on hand-made frames whose differences are known."""

import math
import os
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.report import comparison as cmp
from harness.report.tables import AVERAGE

SEEDS = (1, 2, 3)


def tidy(rows):
    return pd.DataFrame(rows, columns=["method", "dataset", "seed", "value"])


def frame_with(deltas_by_dataset, baseline_values=None, method="ours", baseline="base"):
    """The baseline at irregular values per seed and ``method`` at baseline + the given deltas."""
    rows = []
    for d, (dataset, deltas) in enumerate(deltas_by_dataset.items()):
        for s, delta in zip(SEEDS, deltas):
            value = (baseline_values or {}).get((dataset, s), 60.0 + 5.0 * d + ((s * 37 + d * 11) % 13) / 4.0)
            rows += [(baseline, dataset, s, value), (method, dataset, s, value + delta)]
    return tidy(rows)


def t_interval(deltas):
    """The 95 % Student-t interval of the mean difference, by scipy's own interval function."""
    deltas = np.asarray(deltas, dtype=float)
    return stats.t.interval(0.95, len(deltas) - 1, loc=deltas.mean(), scale=stats.sem(deltas))


def row(table, method, dataset):
    found = table[(table["method"] == method) & (table["dataset"] == dataset)]
    assert len(found) == 1, (method, dataset, table)
    return found.iloc[0]


def test_columns_and_row_order():
    frame = frame_with({"a": (1.0, 2.0, 4.0), "b": (0.5, -1.0, 2.0)})
    frame = pd.concat([frame, frame[frame["method"] == "ours"].assign(method="other")], ignore_index=True)
    table = cmp.comparison(frame, "base", "accuracy@4")
    assert tuple(table.columns) == cmp.COLUMNS
    assert list(zip(table["method"], table["dataset"])) == [
        ("ours", "a"),
        ("ours", "b"),
        ("ours", AVERAGE),
        ("other", "a"),
        ("other", "b"),
        ("other", AVERAGE),
    ]
    assert set(table["baseline"]) == {"base"} and set(table["metric"]) == {"accuracy@4"}


def test_clear_win_per_dataset_and_average():
    deltas = {"a": (2.0, 2.5, 3.5), "b": (1.0, 1.8, 1.2), "c": (3.0, 2.0, 2.6), "d": (0.9, 1.4, 1.1)}
    table = cmp.comparison(frame_with(deltas), "base", "H")
    for dataset, d in deltas.items():
        got = row(table, "ours", dataset)
        low, high = t_interval(d)
        assert got["n_pairs"] == 3
        assert got["mean_delta"] == pytest.approx(np.mean(d))
        assert (got["ci_low"], got["ci_high"]) == pytest.approx((low, high))
        assert got["p_value"] == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
        assert got["verdict"] == "better"
    average = row(table, "ours", AVERAGE)
    means = [np.mean(d) for d in deltas.values()]
    assert average["n_pairs"] == len(deltas)
    assert average["mean_delta"] == pytest.approx(np.mean(means))
    assert average["p_value"] == pytest.approx(stats.wilcoxon(means).pvalue)
    assert 0 < average["ci_low"] < average["mean_delta"] < average["ci_high"]
    assert average["verdict"] == "better"


def test_loss_is_worse():
    deltas = {"a": (-2.0, -2.5, -3.5), "b": (-1.0, -1.8, -1.2), "c": (-3.0, -2.0, -2.6)}
    table = cmp.comparison(frame_with(deltas), "base", "H")
    assert set(table["verdict"]) == {"worse"}
    average = row(table, "ours", AVERAGE)
    assert average["ci_high"] < 0
    assert average["p_value"] == pytest.approx(stats.wilcoxon([np.mean(d) for d in deltas.values()]).pvalue)


def test_noise_is_within_noise():
    deltas = {"a": (1.0, -2.0, 0.5), "b": (-1.5, 1.0, 0.2), "c": (0.3, -0.4, 0.6)}
    table = cmp.comparison(frame_with(deltas), "base", "H")
    for dataset, d in deltas.items():
        got = row(table, "ours", dataset)
        assert got["ci_low"] < 0 < got["ci_high"]
        assert got["p_value"] == pytest.approx(stats.ttest_rel(np.zeros(3) + d, np.zeros(3)).pvalue)
    assert set(table["verdict"]) == {"within noise"}


@pytest.mark.filterwarnings("error")  # scipy's tests on zero differences warn; a tie is answered without them
def test_tie_is_within_noise_with_p_one():
    frame = frame_with({"a": (0.0, 0.0, 0.0), "b": (0.0, 0.0, 0.0), "c": (0.0, 0.0, 0.0)})
    table = cmp.comparison(frame, "base", "H")
    assert set(table["verdict"]) == {"within noise"}
    assert list(table["p_value"]) == [1.0] * 4
    assert list(table["mean_delta"]) == [0.0] * 4
    assert row(table, "ours", AVERAGE)["ci_low"] == row(table, "ours", AVERAGE)["ci_high"] == 0.0


def test_constant_nonzero_difference_is_a_consistent_win():
    # (30.2 + 0.3) - 30.2 and (70.2 + 0.3) - 70.2 differ in floats: the same measured difference on every
    # seed must still count as constant
    values = {("a", s): v for s, v in zip(SEEDS, (30.2, 50.2, 70.2))}
    table = cmp.comparison(frame_with({"a": (0.3, 0.3, 0.3)}, values), "base", "H")
    got = row(table, "ours", "a")
    assert got["p_value"] == 0.0
    assert got["ci_low"] == got["ci_high"] == pytest.approx(0.3)
    assert got["verdict"] == "better"


def test_one_seed_has_no_interval_and_no_p_value():
    frame = tidy([("base", "a", 1, 50.0), ("ours", "a", 1, 58.0)])
    table = cmp.comparison(frame, "base", "H")
    for dataset in ("a", AVERAGE):
        got = row(table, "ours", dataset)
        assert got["n_pairs"] == 1 and got["mean_delta"] == 8.0
        assert math.isnan(got["ci_low"]) and math.isnan(got["ci_high"])
        assert got["verdict"] == "within noise"
    assert math.isnan(row(table, "ours", "a")["p_value"])


def test_only_common_seeds_pair():
    frame = tidy(
        [("base", "a", s, 50.0 + s) for s in (1, 2, 3)] + [("ours", "a", s, 52.0 + s * 1.5) for s in (2, 3, 4)]
    )
    got = row(cmp.comparison(frame, "base", "H"), "ours", "a")
    assert got["n_pairs"] == 2
    assert got["mean_delta"] == pytest.approx(np.mean([(52 + 3) - 52, (52 + 4.5) - 53]))


def test_seedless_method_pairs_with_every_baseline_seed():
    baseline = {1: 61.0, 2: 64.5, 3: 62.0}
    rows = [("coop", "a", s, v) for s, v in baseline.items()] + [("zsclip", "a", None, 63.0)]
    table = cmp.comparison(tidy(rows), "coop", "H")
    got = row(table, "zsclip", "a")
    deltas = [63.0 - v for v in baseline.values()]
    assert got["n_pairs"] == 3
    assert got["mean_delta"] == pytest.approx(np.mean(deltas))
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(t_interval(deltas))
    assert got["p_value"] == pytest.approx(stats.ttest_1samp(deltas, 0.0).pvalue)
    # and the other way round: a seedless baseline
    got = row(cmp.comparison(tidy(rows), "zsclip", "H"), "coop", "a")
    assert got["n_pairs"] == 3 and got["mean_delta"] == pytest.approx(-np.mean(deltas))


def test_bootstrap_is_reproducible_and_matches_a_loop():
    deltas = [np.array([1.0, -0.5, 2.0]), np.array([0.25]), np.array([3.0, 1.0])]
    first = cmp.bootstrap_interval(deltas)
    assert first == cmp.bootstrap_interval([d.copy() for d in deltas])
    # the documented draws, resampled one by one
    rng = np.random.default_rng(0)
    picks = rng.integers(0, 3, size=(10_000, 3))
    uniforms = rng.random((10_000, 3, 3))
    means = []
    for b in range(10_000):
        dataset_means = []
        for j in range(3):
            d = deltas[picks[b, j]]
            dataset_means.append(sum(d[int(uniforms[b, j, i] * len(d))] for i in range(len(d))) / len(d))
        means.append(sum(dataset_means) / 3)
    assert first == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)


def test_bootstrap_agrees_with_an_independent_resampler():
    deltas = [
        np.array([1.0, -0.5, 2.0]),
        np.array([0.2, 0.4, 0.1]),
        np.array([3.0, 1.0, 2.2]),
        np.array([-1.0, 0.0, 0.5]),
    ]
    rng = np.random.default_rng(12345)
    means = []
    for _ in range(4000):
        drawn = rng.choice(len(deltas), size=len(deltas))
        means.append(np.mean([rng.choice(deltas[i], size=len(deltas[i])).mean() for i in drawn]))
    low, high = np.percentile(means, [2.5, 97.5])
    assert cmp.bootstrap_interval(deltas) == pytest.approx((low, high), abs=0.12)


def test_average_ci_comes_from_the_bootstrap_of_the_datasets_deltas():
    deltas = {"a": (1.0, -0.5, 2.0), "b": (0.2, 0.4, 0.1), "c": (3.0, 1.0, 2.2)}
    average = row(cmp.comparison(frame_with(deltas), "base", "H"), "ours", AVERAGE)
    expected = cmp.bootstrap_interval([np.array(d) for d in deltas.values()])
    assert (average["ci_low"], average["ci_high"]) == pytest.approx(expected)


def test_comparison_is_fast_enough_for_a_full_study():
    rng = np.random.default_rng(0)
    rows = [(f"m{m}", f"d{d}", s, 60 + m + rng.normal()) for m in range(11) for d in range(11) for s in SEEDS]
    start = time.perf_counter()
    table = cmp.comparison(tidy(rows), "m0", "H")
    assert len(table) == 10 * 12
    assert time.perf_counter() - start < 3.0  # well under a second alone; a shared CI machine is slower


def test_harmonic_frame_is_per_seed():
    frame = pd.DataFrame(
        [("coop", "a", 1, 80.0, 40.0), ("coop", "a", 2, 60.0, 60.0), ("coop", "a", 3, 70.0, None)],
        columns=["method", "dataset", "seed", "base", "new"],
    )
    tidy_h = cmp.harmonic_frame(frame)
    assert list(tidy_h.columns) == ["method", "dataset", "seed", "value"]
    assert list(tidy_h["seed"]) == [1, 2]
    assert list(tidy_h["value"]) == pytest.approx([2 * 80 * 40 / 120, 60.0])


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda f: f.drop(columns="seed"), ["'seed'", "expected columns"]),
        (lambda f: pd.concat([f, f.iloc[:1]]), ["base on a", "seed 1", "one row per"]),
        (lambda f: pd.concat([f, tidy([("base", "a", None, 1.0)])]), ["base on a", "without"]),
        (lambda f: f.assign(value=f["value"].where(f.index != 3, np.nan)), ["not a finite number", "ours"]),
    ],
)
def test_bad_frames_are_named(change, words):
    frame = change(frame_with({"a": (1.0, 2.0, 3.0)}))
    with pytest.raises(ValueError) as error:
        cmp.comparison(frame, "base", "H")
    assert all(w in str(error.value) for w in words), str(error.value)


def test_bad_baseline_and_metric_are_named():
    frame = frame_with({"a": (1.0, 2.0, 3.0)})
    with pytest.raises(ValueError, match="'cocoop'.*'base', 'ours'"):
        cmp.comparison(frame, "cocoop", "H")
    with pytest.raises(ValueError, match="'acc'.*accuracy@K"):
        cmp.comparison(frame, "base", "acc")


# Leaderboard: four methods on five datasets, a seedless one among them, two tied on one dataset.
SCORES = {
    "coop": [70.0, 61.0, 80.0, 55.0, 90.0],
    "cocoop": [72.0, 63.0, 79.0, 58.0, 91.0],
    "maple": [75.0, 65.0, 83.0, 59.0, 92.0],
    "zsclip": [65.0, 63.0, 70.0, 50.0, 85.0],
}
DATASETS = ("a", "b", "c", "d", "e")


def board_frame(scores=SCORES, datasets=DATASETS):
    rows = []
    for method, values in scores.items():
        for dataset, value in zip(datasets, values):
            if method == "zsclip":
                rows.append((method, dataset, None, value))
            else:  # seeds around the value, averaging to it
                rows += [(method, dataset, s, value + (s - 2) * 0.7) for s in SEEDS]
    return tidy(rows)


def test_leaderboard_ranks_and_friedman_against_scipy():
    board = cmp.leaderboard(board_frame())
    matrix = np.array([SCORES[m] for m in SCORES]).T  # datasets x methods
    mean_ranks = stats.rankdata(-matrix, axis=1).mean(axis=0)
    table = board.table.set_index("method")
    for i, method in enumerate(SCORES):
        assert table.loc[method, "average"] == pytest.approx(np.mean(SCORES[method]))
        assert table.loc[method, "mean_rank"] == pytest.approx(mean_ranks[i])
    assert list(board.table["method"]) == ["maple", "cocoop", "coop", "zsclip"]
    assert list(board.table["rank"]) == [1, 2, 3, 4]
    assert table.loc["cocoop", "mean_rank"] == pytest.approx((2 + 2.5 + 3 + 2 + 2) / 5)  # the tie on b averaged
    expected = stats.friedmanchisquare(*matrix.T)
    assert (board.friedman_statistic, board.friedman_p) == pytest.approx((expected.statistic, expected.pvalue))
    assert board.datasets == DATASETS and board.excluded == {} and board.untested is None


def test_leaderboard_groups_are_the_diagrams_bars():
    from scikit_posthocs import posthoc_nemenyi_friedman
    from scikit_posthocs._plotting import _find_maximal_cliques

    rng = np.random.default_rng(3)
    methods = [f"m{i}" for i in range(7)]
    scores = {m: list(60 + 1.5 * i + rng.normal(0, 2, size=12)) for i, m in enumerate(methods)}
    datasets = tuple(f"d{j}" for j in range(12))
    board = cmp.leaderboard(board_frame(scores, datasets))
    assert board.friedman_p < 0.05
    p_values = posthoc_nemenyi_friedman(np.array([scores[m] for m in methods]).T)
    p_values.index = p_values.columns = methods
    assert board.p_values.loc[methods, methods].to_numpy() == pytest.approx(p_values.to_numpy())
    cliques = _find_maximal_cliques(pd.DataFrame(p_values >= 0.05, dtype=int))
    assert sorted(map(sorted, board.groups)) == sorted(map(sorted, cliques))
    assert len(board.groups) > 1
    # methods share a letter exactly when they share a group
    letters = board.table.set_index("method")["groups"]
    for first in methods:
        for second in methods:
            together = any(first in g and second in g for g in board.groups)
            assert together == bool(set(letters[first]) & set(letters[second]))
    # the critical difference separates the pairs Nemenyi tells apart
    ranks = board.table.set_index("method")["mean_rank"]
    for first in methods:
        for second in methods:
            apart = abs(ranks[first] - ranks[second]) > board.critical_difference
            assert apart == (p_values.loc[first, second] < 0.05)


def test_leaderboard_without_friedman_rejection_is_one_group():
    from scikit_posthocs import posthoc_nemenyi_friedman

    # Friedman p = 0.0503, while Nemenyi alone would set w apart from z: the post-hoc is not read
    scores = {
        "w": [4.0, 4.0, 4.0, 3.0],
        "x": [3.0, 2.0, 2.0, 4.0],
        "y": [2.0, 3.0, 3.0, 1.0],
        "z": [1.0, 1.0, 1.0, 2.0],
    }
    assert posthoc_nemenyi_friedman(np.array(list(scores.values())).T).to_numpy().min() < 0.05
    board = cmp.leaderboard(board_frame(scores, ("a", "b", "c", "d")))
    assert board.friedman_p == pytest.approx(stats.friedmanchisquare(*scores.values()).pvalue)
    assert board.friedman_p >= 0.05
    assert board.groups == (tuple(board.table.sort_values("mean_rank")["method"]),)
    assert set(board.table["groups"]) == {"a"}
    assert (board.p_values.to_numpy() == 1.0).all()  # what the diagram draws: one bar


def test_critical_difference_against_demsars_table():
    # Demšar (2006), Table 5(a): q_0.05 = 2.949 for seven classifiers; CD = q sqrt(k (k + 1) / (6 N))
    scores = {f"m{i}": [60 + i + j % 3 for j in range(12)] for i in range(7)}
    board = cmp.leaderboard(board_frame(scores, tuple(f"d{j}" for j in range(12))))
    assert board.critical_difference == pytest.approx(2.949 * np.sqrt(7 * 8 / (6 * 12)), rel=1e-3)


def test_leaderboard_leaves_out_a_method_missing_a_dataset():
    frame = board_frame()
    frame = pd.concat([frame, tidy([("tcp", d, s, 99.0) for d in DATASETS[:-1] for s in SEEDS])], ignore_index=True)
    board = cmp.leaderboard(frame)
    assert "tcp" not in set(board.table["method"])
    assert board.excluded == {"tcp": ("e",)}
    assert any("tcp" in note and "e" in note for note in board.notes)
    assert board.friedman_statistic == pytest.approx(cmp.leaderboard(board_frame()).friedman_statistic)


def test_critical_difference_figure(tmp_path):
    paths, reason = cmp.figure_critical_difference(board_frame(), str(tmp_path))
    assert reason is None
    for ext in ("png", "pdf"):
        assert os.path.getsize(paths[ext]) > 1000
        assert paths[ext] == str(tmp_path / f"figure_critical_difference.{ext}")


def test_no_figure_with_two_datasets_or_one_method(tmp_path):
    two = {m: v[:2] for m, v in SCORES.items()}
    assert cmp.figure_critical_difference(board_frame(two, DATASETS[:2]), str(tmp_path)) == (
        None,
        "no diagram: the Friedman test needs at least 3 datasets, this study has 2",
    )
    one = {"coop": SCORES["coop"]}
    paths, reason = cmp.figure_critical_difference(board_frame(one), str(tmp_path))
    assert paths is None and "at least 2 methods" in reason and "has 1" in reason
    assert os.listdir(tmp_path) == []


def test_two_methods_are_decided_by_the_post_hoc_alone(tmp_path):
    scores = {"coop": SCORES["coop"], "maple": SCORES["maple"]}
    board = cmp.leaderboard(board_frame(scores))
    assert math.isnan(board.friedman_statistic) and math.isnan(board.friedman_p)
    assert any("Nemenyi post-hoc alone" in note for note in board.notes)
    # maple wins on all five datasets: mean ranks 1 and 2, apart by more than Demšar's CD (q_0.05 = 1.960, N = 5)
    assert board.critical_difference == pytest.approx(1.960 * np.sqrt(2 * 3 / (6 * 5)), rel=1e-3)
    assert board.groups == (("maple",), ("coop",))
    assert list(board.table["groups"]) == ["a", "b"]
    paths, reason = cmp.figure_critical_difference(board_frame(scores), str(tmp_path))
    assert reason is None and os.path.exists(paths["png"])


def test_a_method_with_no_pair_has_no_row_and_is_named_unpaired():
    """Seeds disjoint from the baseline's: no Average of nothing passing for "within noise"."""
    frame = frame_with({"a": (1.0, 2.0, 4.0)})
    stray = frame[frame["method"] == "ours"].assign(method="stray", seed=lambda f: f["seed"] + 10)
    frame = pd.concat([frame, stray], ignore_index=True)
    table = cmp.comparison(frame, "base", "accuracy")
    assert set(table["method"]) == {"ours"}
    assert cmp.unpaired(frame, table, "base") == ["stray"]


def test_a_tied_dataset_is_a_zero_in_the_wilcoxon_test_not_float_noise():
    """Differences 0.1, 0.2, -0.3 average to exactly 0 (float arithmetic: 2e-17): the Wilcoxon test over the
    datasets' means must drop it as a zero (scipy's default), as it does given the exact means."""
    deltas = {
        "a": (0.1, 0.2, -0.3),
        "b": (1.0, 1.5, 2.0),
        "c": (2.0, 2.5, 3.0),
        "d": (-0.5, -0.4, -0.6),
        "e": (0.7, 0.9, 0.8),
    }
    table = cmp.comparison(frame_with(deltas), "base", "accuracy")
    assert row(table, "ours", "a")["mean_delta"] == 0.0
    exact = [0.0, 1.5, 2.5, -0.5, 0.8]
    assert row(table, "ours", AVERAGE)["p_value"] == pytest.approx(stats.wilcoxon(exact).pvalue)
    assert row(table, "ours", AVERAGE)["mean_delta"] == pytest.approx(np.mean(exact))
