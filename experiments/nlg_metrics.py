"""The E2E NLG metrics of the paper's Table 3 (Novikova et al. 2017), each generation scored against every reference
of its input, computed offline by maintained packages.

- ``bleu``: corpus BLEU-4 (sacrebleu, its default 13a tokenization), several references per segment.
- ``nist``: corpus NIST, n-grams up to 5 (NLTK's ``corpus_nist``), on whitespace tokens.
- ``rouge_l``: ROUGE-L F-measure (Google's rouge-score), the best over a segment's references, averaged.

Left out: METEOR (NLTK's needs the WordNet corpus, a download that fails offline) and CIDEr (its maintained
implementation, pycocoevalcap, needs Java for its tokenizer). The E2E challenge's own script computes both.
"""

from __future__ import annotations

from typing import Callable, Sequence

METRICS: tuple[str, ...] = ("bleu", "nist", "rouge_l")
LEFT_OUT = {"meteor": "NLTK's METEOR needs the WordNet corpus (a download)", "cider": "pycocoevalcap needs Java"}


def _bleu(generations: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    from sacrebleu.metrics import BLEU

    width = max(len(refs) for refs in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    return float(BLEU().corpus_score(list(generations), streams).score)


def _nist(generations: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    from nltk.translate.nist_score import corpus_nist

    hypotheses = [g.split() for g in generations]
    if not any(hypotheses):  # NLTK divides by the hypotheses' length
        return 0.0
    return float(corpus_nist([[r.split() for r in refs] for refs in references], hypotheses, n=5))


def _rouge_l(generations: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score_multi(list(refs), gen)["rougeL"].fmeasure for gen, refs in zip(generations, references)]
    return 100.0 * sum(scores) / len(scores)


_SCORERS: dict[str, Callable[[Sequence[str], Sequence[Sequence[str]]], float]] = {
    "bleu": _bleu,
    "nist": _nist,
    "rouge_l": _rouge_l,
}


def nlg_metrics(names: Sequence[str], generations: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """The named metrics of ``generations[i]`` against ``references[i]`` (a list of one or more texts each).
    BLEU and ROUGE-L on the 0–100 scale the paper reports; NIST on its own (0 to about 10)."""
    if len(generations) != len(references):
        raise ValueError(f"{len(generations)} generations for {len(references)} reference sets")
    if not generations or any(len(refs) == 0 for refs in references):
        raise ValueError("every generation needs at least one reference")
    unknown = [n for n in names if n not in _SCORERS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(_SCORERS)}")
    return {n: _SCORERS[n](generations, references) for n in names}
