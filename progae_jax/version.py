"""The library's version, in one place: the package, setup.cfg and every checkpoint read it."""

__version__ = "0.1.0"
