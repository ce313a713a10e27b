"""Paired statistics of the probe (issue 19), computed by hand on small tables."""
import pytest

from ftnb.core.paired import change_interval, mcnemar_p, paired_change, points, retention_text, verdict


def test_exact_mcnemar_by_hand():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(1, 7) == pytest.approx(2 * (1 + 8) / 256)  # C(8,0) + C(8,1) over 2^8, both tails
    assert mcnemar_p(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_p(5, 5) == 1.0


def test_bonett_price_interval_by_hand():
    """1 question forgotten, 2 learned, of 10: b~ = 2/12, c~ = 3/12, centre 1/12;
    SE = sqrt((2/12 + 3/12 - (1/12)^2) / 12) = 0.184780; 95% interval 1/12 -+ 1.959964 x 0.184780."""
    r = change_interval(1, 2, 10)
    assert r["change"] == pytest.approx(0.1)
    assert r["change_low"] == pytest.approx(1 / 12 - 0.362162, abs=1e-5)
    assert r["change_high"] == pytest.approx(1 / 12 + 0.362162, abs=1e-5)


def test_no_flips_is_no_detectable_change_with_a_real_interval():
    """Nothing flipped among 100 questions: still about 2.7 points either way, not a certainty of no change."""
    r = change_interval(0, 0, 100)
    assert r["change"] == 0 and r["change_low"] == pytest.approx(-1.959964 * (2 / 102 / 102) ** 0.5, abs=1e-6)
    assert r["change_high"] == -r["change_low"]


def test_paired_change_counts_the_flips():
    base = [True] * 10 + [False] * 5
    tuned = [False] * 8 + [True] * 2 + [False] * 5
    r = paired_change(base, tuned)
    assert (r["n"], r["b"], r["c"]) == (15, 8, 0) and r["change"] == pytest.approx(-8 / 15)
    assert r["change_high"] < 0 and r["p_value"] == pytest.approx(2 / 256)
    with pytest.raises(ValueError):
        paired_change(base, tuned[:-1])


def test_verdicts():
    assert verdict(-0.05, -0.08, -0.02) == "forgot 5.0 points (2.0 to 8.0)"
    assert verdict(0.03, 0.01, 0.05) == "improved 3.0 points (1.0 to 5.0)"
    assert verdict(-0.01, -0.03, 0.01) == "no detectable change"
    assert verdict(0.0, None, None) == "no detectable change"
    assert points(-0.021, -0.05, 0.008) == "-2.1 points (95% CI -5.0 to +0.8)"
    assert retention_text({"retention": 0.975, "retention_low": 0.931, "retention_high": 1.019}) == \
        "97.5% (95% CI 93.1% to 101.9%)"
    assert retention_text({"retention": None, "retention_low": None}) == "n/a (95% CI n/a to n/a)"


def test_the_paired_interval_is_narrower_than_two_independent_ones():
    """180 questions, 11 forgotten and 18 learned (the demo run): the unpaired retention interval spanned about
    26 points of retention; the paired interval of the change is what a 3-point loss is judged against."""
    r = change_interval(11, 18, 180)
    width = r["change_high"] - r["change_low"]
    assert width < 0.125 and r["change_low"] < 0 < r["change_high"]
