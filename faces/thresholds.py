"""The names of a model's operating points, kept free of heavy imports so command lines can
offer them without loading torch. trainer.evaluate.operating_points chooses them; each
checkpoint stores them (faces.checkpoint)."""
from __future__ import annotations

# Named verification thresholds (trainer.evaluate.operating_points chooses them): strict keeps
# the false accept rate on held-out stranger pairs at most 3e-4, balanced has the best
# accuracy. Strict is the default everywhere `match`, "same" or a cluster is decided.
OPERATING_POINTS = ("strict", "balanced")
DEFAULT_OPERATING_POINT = "strict"
THRESHOLD_HELP = ("Operating point: strict (the default: at most 0.03% of held-out stranger pairs "
                  "pass), balanced (best accuracy on held-out pairs), or a distance between 0 and 2 "
                  "(`trainer info MODEL` shows each one's true and false accept rates).")
# Searches (query, identify, the page) decide by the share of stranger searches
# (faces.open_set); this names the per-pair override they also take.
PER_PAIR_THRESHOLD_HELP = ("Decide per pair instead: an operating point (strict: at most 0.03% of held-out "
                           "stranger pairs pass; balanced: best accuracy) or a distance between 0 and 2. "
                           "A per-pair threshold names more strangers as the gallery grows.")
