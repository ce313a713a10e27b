"""Paired statistics of a probe: the same questions are asked before and after fine-tuning, so what counts is the
change in accuracy measured on the questions that flipped, not two independent intervals.

    b  questions the base model got right and the tuned model gets wrong (forgotten)
    c  questions the base model got wrong and the tuned model gets right (learned)
    change = (c - b) / n, the accuracy of the tuned model minus the base model's

The 95% interval of the change is the Wald interval with Bonett and Price's adjustment (one added to each kind of
flip: Bonett & Price 2012; recommended for paired proportions by Fagerland, Lydersen & Laake 2013), which keeps a real
width when few or no questions flipped; the p-value is the exact McNemar test (a two-sided binomial test of b against
c). The verdict reads the interval: "forgot" or "improved" only when it excludes no change.
"""
import math

Z95 = 1.959963984540054


def mcnemar_p(b, c):
    """Exact two-sided McNemar p-value: the probability, under no change, of a split of the b + c flipped questions
    at least as uneven as this one."""
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1)) / 2 ** m
    return min(1.0, 2 * tail)


def paired_change(base_right, right):
    """{n, b, c, change, change_low, change_high, p_value} from two lists of booleans, item by item."""
    if len(base_right) != len(right):
        raise ValueError("the two passes asked different numbers of questions")
    b = sum(br and not r for r, br in zip(right, base_right))
    c = sum(r and not br for r, br in zip(right, base_right))
    return {"n": len(right), "b": b, "c": c, **change_interval(b, c, len(right)), "p_value": mcnemar_p(b, c)}


def change_interval(b, c, n, z=Z95):
    """{change, change_low, change_high}: the tuned minus the base accuracy, (c - b) / n, and its 95% interval
    (Bonett-Price: b and c each counted one more, out of n + 2)."""
    if n == 0:
        return {"change": 0.0, "change_low": -1.0, "change_high": 1.0}
    pb, pc = (b + 1) / (n + 2), (c + 1) / (n + 2)
    centre = pc - pb
    half = z * math.sqrt(max(0.0, pb + pc - centre ** 2) / (n + 2))
    return {"change": (c - b) / n, "change_low": max(-1.0, centre - half), "change_high": min(1.0, centre + half)}


def verdict(change, low, high):
    """'no detectable change', 'forgot 4.2 points (1.1 to 7.3)' or 'improved 2.0 points (0.3 to 3.9)'."""
    if low is None or high is None or low <= 0 <= high:
        return "no detectable change"
    word, sign = ("forgot", -1) if high < 0 else ("improved", 1)
    a, b = sorted((sign * low * 100, sign * high * 100))
    return f"{word} {sign * change * 100:.1f} points ({a:.1f} to {b:.1f})"


def points(change, low, high):
    """'-2.1 points (95% CI -5.0 to +0.8)': a change in accuracy always shown with its interval."""
    return f"{change * 100:+.1f} points (95% CI {low * 100:+.1f} to {high * 100:+.1f})"


def retention_text(s):
    """'97.5% (95% CI 93.1% to 101.9%)': a summary's retention always shown with its interval ('n/a' where unknown)."""
    pct = [("n/a" if s.get(k) is None else f"{s[k]:.1%}") for k in ("retention", "retention_low", "retention_high")]
    return f"{pct[0]} (95% CI {pct[1]} to {pct[2]})"
