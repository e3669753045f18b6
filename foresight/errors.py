class ForesightError(Exception):
    """An error the user can fix (bad recipe, dataset, checkpoint or argument).

    The message names the file, key or argument and what was expected; the CLI prints it as one
    line and exits non-zero, without a traceback.
    """
