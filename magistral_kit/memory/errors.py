"""The cube's errors: each message names the problem and the fix."""
from __future__ import annotations


class CubeError(RuntimeError):
    """Base class of every cube problem; the message names the problem and the fix."""


class CubeLockedError(CubeError):
    """Another process holds the cube open for writing."""


class CubeFormatError(CubeError):
    """The folder is not a cube this kit can read (other format version, foreign files)."""


class DimensionMismatchError(CubeError):
    """The cube's stored vectors have another dimension than the embedder produces."""


class CubeCorruptError(CubeError):
    """A file of the cube is damaged; the message says which and how to restore."""


class ReadOnlyCubeError(CubeError):
    """A write was attempted on a cube opened with read_only=True."""
