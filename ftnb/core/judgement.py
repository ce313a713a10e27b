"""One judgement from all the forgetting signals, and collapse that is never silent.

The paired change in multiple-choice accuracy (paired.py) is the slow, trustworthy signal; drift from the base model
(KL) and general-text perplexity move first. The rule, in this order:

    collapsed    the answers degenerate (empty, or one token repeated), or the validation loss is far above its best
    forgetting   multiple choice forgot a detectable amount (the paired interval lies below no change)
    drifting     multiple choice shows no detectable loss yet, but KL >= KL_DRIFT or perplexity rose >= PPL_DRIFT
    stable       none of these

The thresholds are calibrated on runs from gentle to destructive (docs/forgetting.md: the calibration table).
"""
import collections
import re

JUDGEMENTS = ("stable", "drifting", "forgetting", "collapsed")
KL_DRIFT = 1.0     # nats per token along the base model's own answers
PPL_DRIFT = 0.5    # +50% general-text perplexity
REPEAT_SHARE = 0.6  # an answer whose most common word (or character run) is this share of it is degenerate
MIN_WORDS = 6      # shorter answers are not judged for repetition


def degenerate(text):
    """Why an answer is degenerate ("empty", "repeats '...'"), or None when it reads like an answer."""
    stripped = (text or "").strip()
    if not stripped:
        return "empty"
    unit = re.fullmatch(r"(.{1,3}?)\1{5,}", stripped, re.S)  # "......", "DDDDDD", "abababababab"
    if unit:
        return f"repeats {unit.group(1)!r}"
    words = re.findall(r"\w+|[^\w\s]+", stripped)
    if len(words) >= MIN_WORDS:
        word, count = collections.Counter(words).most_common(1)[0]
        if count / len(words) >= REPEAT_SHARE:
            return f"repeats {word!r} ({count} of {len(words)} words)"
    return None


def collapse(answers=(), before=None, val_loss=None, best_val=None):
    """A warning in words when a run has collapsed, else None: most answers degenerate where most of the answers
    `before` (the base model's, or the previous evaluation's) were not, or the validation loss at least doubled from
    its best and rose by more than one nat."""
    bad = [why for why in map(degenerate, answers) if why]
    was_bad = sum(1 for a in before if degenerate(a)) if before is not None else None
    if answers and before and len(bad) * 2 > len(answers) and was_bad * 2 <= len(before):
        return f"collapse: {len(bad)} of {len(answers)} answers degenerate ({bad[0]})"
    if val_loss is not None and best_val is not None and val_loss > best_val + max(1.0, best_val):
        return f"collapse: the validation loss {val_loss:.2f} is far above its best {best_val:.2f}"
    return None


def judge(summary, warning=None):
    """(judgement, the signals behind it) for a probe summary (probe.summarize) and a collapse warning."""
    signals = [f"multiple choice: {summary.get('verdict') or 'no paired verdict'}"]
    kl, ppl = summary.get("kl"), summary.get("ppl_change")
    if kl is not None:
        signals.append(f"KL {kl:.2f} nats per token" + (f" (at least {KL_DRIFT:g}: drifting)" if kl >= KL_DRIFT else ""))
    if ppl is not None:
        signals.append(f"perplexity {ppl:+.0%}" + (f" (at least {PPL_DRIFT:+.0%}: drifting)" if ppl >= PPL_DRIFT else ""))
    if warning:
        signals.append(warning)
        return "collapsed", signals
    if summary.get("change_high") is not None and summary["change_high"] < 0:
        return "forgetting", signals
    if (kl is not None and kl >= KL_DRIFT) or (ppl is not None and ppl >= PPL_DRIFT):
        return "drifting", signals
    return "stable", signals
