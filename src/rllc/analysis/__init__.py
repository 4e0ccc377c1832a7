"""Head analysis: behavioural scores, ablations, path patching, composition, tokens in context, head types."""

from rllc.analysis.ablation import (
    ablated_per_token_loss,
    ablation_hooks,
    ablation_scores,
    ablation_table,
    head_z_means,
    per_token_ablation_effects,
    per_token_loss,
    resample_permutation,
)
from rllc.analysis.composition import composition_baseline, composition_scores, composition_table
from rllc.analysis.head_types import (
    HEAD_TYPES,
    HeadTypeThresholds,
    label_agreement,
    label_heads,
    synthetic_ground_truth,
    tokens_in_context_agreement,
)
from rllc.analysis.over_training import HeadAnalysis, HeadAnalysisConfig, analyze_heads, heads_command, plan_heads
from rllc.analysis.patching import dyck_path_patching, dyck_tokens, path_patched_per_token_loss
from rllc.analysis.scores import (
    attention_patterns,
    current_token_scores,
    head_score_table,
    icl_positions,
    icl_score,
    icl_score_se,
    induction_scores,
    prefix_matching_scores,
    single_token_matching_scores,
    single_token_matching_tokens,
    previous_token_scores,
    repeated_random_tokens,
)
from rllc.analysis.token_contexts import (
    CLASSES,
    BracketVocab,
    TokensInContextConfig,
    classify_tokens_in_context,
    dyck_openers,
    render_tokens_in_context_html,
    tokens_in_context,
    tokens_in_context_summary,
)

__all__ = [
    "CLASSES", "HEAD_TYPES", "BracketVocab", "HeadAnalysis", "HeadAnalysisConfig", "HeadTypeThresholds",
    "TokensInContextConfig", "ablated_per_token_loss", "ablation_hooks", "ablation_scores", "ablation_table",
    "analyze_heads", "attention_patterns", "classify_tokens_in_context", "composition_baseline",
    "composition_scores", "composition_table", "current_token_scores", "dyck_openers", "dyck_path_patching",
    "dyck_tokens", "head_score_table", "head_z_means", "heads_command",
    "icl_positions", "icl_score", "icl_score_se", "induction_scores", "label_agreement", "label_heads", "path_patched_per_token_loss",
    "per_token_ablation_effects", "per_token_loss", "prefix_matching_scores", "previous_token_scores",
    "render_tokens_in_context_html", "repeated_random_tokens", "plan_heads", "resample_permutation",
    "single_token_matching_scores", "single_token_matching_tokens",
    "synthetic_ground_truth", "tokens_in_context", "tokens_in_context_agreement", "tokens_in_context_summary",
]
