"""momil: Mixture of Multi-Instance Learners for compound activity prediction from Cell Painting screens."""

__version__ = "0.1.0"

from momil.errors import InputError, MomilError  # noqa: E402

__all__ = ["__version__", "MomilError", "InputError"]
