"""Head analysis: behavioural scores of attention heads."""

from rllc.analysis.scores import (
    attention_patterns,
    current_token_scores,
    head_score_table,
    head_scores_over_training,
    induction_scores,
    previous_token_scores,
    repeated_random_tokens,
)

__all__ = ["attention_patterns", "current_token_scores", "head_score_table", "head_scores_over_training", "induction_scores",
           "previous_token_scores", "repeated_random_tokens"]
