"""The exception every kvevict call raises on bad input."""


class KvevictError(ValueError):
    """A rejected call: nothing was written.

    ``str(e)`` is the library's message (``kvevict: <category> in '<argument>': <detail>``),
    ``e.code`` the category (``"invalid argument"``, ``"budget too small"``, ...) and ``e.argument``
    the offending argument as the API spells it.
    """

    def __init__(self, message: str, code: str = "invalid argument", argument: str = ""):
        super().__init__(message)
        self.code = code
        self.argument = argument
