"""The one error that means "the request is wrong", as opposed to "the run failed".

Raised where a value is judged: an unknown name, a setting out of range, a prerequisite the user must
supply first (a suite to build, a bucket to create, a stage to run). The command line exits 2 on it
and 1 on anything else; the task policy never retries it. It is a ``ValueError``, so code that
already catches those keeps working.
"""


class BadInputError(ValueError):
    """The request cannot succeed as given; the message names the bad value and what to do instead."""
