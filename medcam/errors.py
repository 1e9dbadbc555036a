"""The error every user mistake raises: one line that names the problem and the fix.

The CLI turns a :class:`UserError` into ``medcam: error: <message>`` and exit status 2;
anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user (file, option, layer, class, pixel set, checkpoint)."""
