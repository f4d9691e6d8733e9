"""Saliency-driven video cropping scored by memorability predictors (Mudgal et al., arXiv 2309.11881)."""
