"""RouteLLM's matrix-factorization router (lm-sys/RouteLLM, routers/matrix_factorization/model.py).

Each model m has a learned embedding P_m (L2-normalized, as in RouteLLM); a query is its frozen text
embedding q projected to the same width. The score is s(m, q) = w^T (P_m * proj(q)) and
P(a beats b | q) = sigmoid(s(a, q) - s(b, q)). The query embedding is precomputed, so training touches
only P, the projection and w.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class MFModel(nn.Module):
    def __init__(self, num_models: int, embed_dim: int, dim: int = 128):
        super().__init__()
        self.P = nn.Embedding(num_models, dim)
        self.text_proj = nn.Linear(embed_dim, dim, bias=False)
        self.classifier = nn.Linear(dim, 1, bias=False)

    def score(self, model_ids: torch.Tensor, query_emb: torch.Tensor) -> torch.Tensor:
        """s(m, q) for paired rows of model ids (n,) and query embeddings (n, embed_dim)."""
        model_embed = nn.functional.normalize(self.P(model_ids), p=2, dim=-1)
        return self.classifier(model_embed * self.text_proj(query_emb)).squeeze(-1)

    def forward(self, a: torch.Tensor, b: torch.Tensor, query_emb: torch.Tensor) -> torch.Tensor:
        """Logit of P(a beats b)."""
        return self.score(a, query_emb) - self.score(b, query_emb)

    def forward_indexed(self, a: torch.Tensor, b: torch.Tensor, q_idx: torch.Tensor,
                        prompt_emb: torch.Tensor) -> torch.Tensor:
        """Same logits for rows that index a prompt table: each distinct prompt is projected once
        (a store has many judgements per prompt), and s(a) - s(b) folds into one classifier call."""
        uniq, inverse = torch.unique(q_idx, return_inverse=True)
        z = self.text_proj(prompt_emb[uniq])[inverse]
        diff = nn.functional.normalize(self.P(a), p=2, dim=-1) - nn.functional.normalize(self.P(b), p=2, dim=-1)
        return self.classifier(diff * z).squeeze(-1)

    def export(self) -> dict[str, np.ndarray]:
        """Weights as plain arrays (what the registered model carries)."""
        with torch.no_grad():
            return {
                "P": nn.functional.normalize(self.P.weight, p=2, dim=-1).cpu().numpy().astype(np.float32),
                "text_proj": self.text_proj.weight.cpu().numpy().astype(np.float32),  # (dim, embed_dim)
                "classifier": self.classifier.weight.cpu().numpy().astype(np.float32).reshape(-1),  # (dim,)
            }


def pair_direction(weights: dict[str, np.ndarray], strong: int, weak: int) -> np.ndarray:
    """v with s(strong, q) - s(weak, q) = v . q: the whole router for one pair is one dot product."""
    diff = weights["classifier"] * (weights["P"][strong] - weights["P"][weak])  # (dim,)
    return (diff @ weights["text_proj"]).astype(np.float32)  # (embed_dim,)
