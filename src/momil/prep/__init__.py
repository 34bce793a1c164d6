"""Preparing a screen for learning: plate-wise correction against controls, compound folds by chemical similarity."""
