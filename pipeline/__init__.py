"""wsi-mil: whole-slide images → tissue patches → features → MIL models, as one cached workflow."""

__version__ = "0.1.0"
