"""What the benchmark scripts share: the real preference pairs they time."""

from __future__ import annotations

from rmrouter.data import AlpacaEvalPairs, GSM8KSolutionPairs, HHRLHFHarmlessPairs, PreferenceRecord

PAIRS_ORIGIN = "GSM8K solutions + HH-RLHF harmless + AlpacaEval, round-robin"


def real_pairs(count: int) -> list[PreferenceRecord]:
    """`count` vendored pairs, taken in turn from GSM8K, HH-RLHF harmless and AlpacaEval."""
    sources = [GSM8KSolutionPairs(limit=count), HHRLHFHarmlessPairs(limit=count), AlpacaEvalPairs(limit=count)]
    columns = [source.load() for source in sources]
    interleaved = [column[index] for index in range(count) for column in columns if index < len(column)]
    return interleaved[:count]
