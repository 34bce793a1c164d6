"""Training data: labelled well pairs and padded bags, read from the instance store."""

from momil.data.bags import load_bags
from momil.data.pairs import WellPairs, labelled_wells_of, rotation_wells, wells_of

__all__ = ["WellPairs", "labelled_wells_of", "load_bags", "rotation_wells", "wells_of"]
