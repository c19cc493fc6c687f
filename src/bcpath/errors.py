"""Errors that carry what was expected, what was found, and what to do."""

from __future__ import annotations


class BcpathError(Exception):
    """Base class for errors a user can act on (bad input, bad config).

    Messages follow one pattern: ``"slide S3: <what is wrong>; <how to fix it>"``.
    """


class SlideError(BcpathError):
    """A problem with one slide file: unreadable, no µm/px, no tissue where required."""

    def __init__(self, slide: str, problem: str, fix: str) -> None:
        self.slide = slide
        self.problem = problem
        self.fix = fix
        super().__init__(f"slide {slide}: {problem}; {fix}")


class SampleSheetError(BcpathError):
    """A problem with the sample sheet or the cohort directory (names the file and row)."""
