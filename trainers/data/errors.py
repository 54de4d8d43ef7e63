"""The one exception type of the input pipelines."""


class DataError(ValueError):
    """A data set is missing, malformed, mislabelled or too corrupt to train on.

    A ValueError so callers that already catch bad arguments catch bad data too.
    """
