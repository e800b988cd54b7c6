"""Concept-level techniques: TCAV (concept activation vectors with significance), concept discovery by
factorisation (CRAFT-style) and concept maps."""
