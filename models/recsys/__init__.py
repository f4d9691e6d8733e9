"""Recommender models, defences and shilling attacks for the recsys task (TCD, Co-Attack, GCoAttack).

Plain ``nn.Module`` maths plus plain training loops: a TCD epoch trains three models on ~1.5 M samples
each with per-epoch full-matrix pseudo-labelling between them, which a Lightning Trainer per model and
epoch would only slow down (see ``training.py``).
"""
