"""The error every user mistake raises: one line that names the problem and the fix.

The CLI turns a :class:`UserError` into ``medcam: error: <message>`` and exit status 2;
anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user (file, option, layer, class, pixel set, checkpoint)."""


def one_line(text: object) -> str:
    """``text`` on one line: line breaks and other control characters escaped (``\\n``, ``\\x1b``)."""
    out = []
    for char in str(text):
        if char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append(" ")
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out).strip()
