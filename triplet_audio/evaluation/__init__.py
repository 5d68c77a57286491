"""Stage 6: the paper's evaluations (QbE, shallow classifiers, few-shot) and reports."""
