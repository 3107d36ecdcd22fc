"""The source article's claims, digested into one line each, in the article's order.

The article is a Chinese-language explainer on vanishing and exploding gradients: it traces
both to the chain rule (a product of per-layer factors, each an activation derivative times a
weight), blames saturating activations and the weight scale, and recommends warm-up, gradient
clipping, L1/L2 regularisation, ReLU-family activations, BatchNorm/LayerNorm, residual blocks
and a sensible initialisation.
"""

CLAIMS: dict[str, str] = {
    "C1": "dLoss/dw_i is a product of per-layer chain-rule factors df_{i+1}/df_i.",
    "C2": "Each chain-rule factor is f'(z_{i+1}) * w_i.",
    "C3": "sigmoid' <= 0.25 and tanh' <= 1 (the article's tanh formula has a typo).",
    "C4": "Factors < 1 make gradients vanish and factors > 1 make them explode, "
    "exponentially in depth.",
    "C5": "Saturating activations (sigmoid, tanh) doom deep networks to vanishing gradients.",
    "C6": "Large initial weights cause exploding gradients at the start of training.",
    "C7": "Warm-up removes the early oscillation of the loss: training gets through the "
    "large-gradient start without oscillating or blowing up.",
    "C8": "Gradient clipping prevents explosion.",
    "C9": "L1/L2 weight regularisation corrects weights blown up by exploding gradients.",
    "C10": "ReLU-family activations (derivative 1 for x > 0) fix vanishing gradients.",
    "C11": "BatchNorm/LayerNorm fix vanishing/exploding gradients; BatchNorm is invariant to "
    "the weight scale.",
    "C12": "Residual blocks y = x + F(x), x' = ReLU(y) pass the gradient straight to shallow "
    "layers, since x_L = x_l + sum_i F(x_i).",
    "C13": "A sensible initialisation fixes both vanishing and exploding gradients.",
}

# Findings the article does not make, measured by the same figures and reported after the
# claims.
FINDINGS: dict[str, str] = {
    "F1": "Recurrent networks: the gradient through time grows or shrinks by a fixed factor "
    "per step (the recurrent weights' chi_1), the case gradient clipping was invented for.",
}

VERDICTS = ("confirmed", "nuanced", "contradicted")


def combined_verdict(verdicts: list[str]) -> str:
    """One verdict from several figures' verdicts on one claim.

    Every figure agreeing gives that verdict; any disagreement (a claim confirmed in one
    setting and contradicted in another) is ``"nuanced"``.

    Example:
      >>> combined_verdict(["confirmed", "contradicted"])
      'nuanced'
    """
    distinct = set(verdicts)
    return distinct.pop() if len(distinct) == 1 else "nuanced"
