"""Krippendorff's alpha against hand-computed values, and the CUSUM alarm on a shifted up-rate."""

import pytest

from curation.agreement import cusum_alarms, krippendorff_alpha


def test_alpha_matches_the_coincidence_matrix_by_hand():
    # o_aa = o_bb = 2, o_ab = o_ba = 1, n = 6: D_o = 2/6, D_e = 18/30
    assert krippendorff_alpha([["a", "a"], ["b", "b"], ["a", "b"]]) == pytest.approx(1 - (2 / 6) / (18 / 30))
    assert krippendorff_alpha([["a", "a"], ["b", "b"]]) == 1.0
    assert krippendorff_alpha([["a"], ["b"]]) is None  # nothing pairable
    assert krippendorff_alpha([["a", "b"], ["b", "a"]]) < 0  # systematic disagreement


def test_cusum_fires_on_a_shift_and_not_on_a_steady_rate():
    steady = [(60, 100)] * 12
    assert cusum_alarms(steady) == []
    shifted = [(60, 100)] * 6 + [(85, 100)] * 4
    assert cusum_alarms(shifted) and cusum_alarms(shifted)[0] in (6, 7)  # within two windows of the shift
    assert cusum_alarms([(1, 2)]) == []  # too short for a reference
