"""Error types that the stages turn into one clear message and a non-zero exit.

Every error a user can cause (bad params, a bad archive, a broken image) is one of these,
so a stage can print its message without a traceback: the message itself names the file,
key or value at fault, and the traceback would only bury it.
"""


class CifarlabError(Exception):
    """A problem with the user's input, explained in the message."""


class ParamsError(CifarlabError):
    """A key or value in params.yaml that is unknown, of the wrong type or out of range."""

    def __init__(self, key: str, message: str, value=None, choices=None):
        self.key = key
        self.value = value
        self.choices = choices
        text = f"params.yaml: {key}: {message}"
        if value is not None:
            text += f" (got {value!r})"
        if choices:
            shown = sorted(str(c) for c in choices)
            more = f" ... and {len(shown) - 40} more" if len(shown) > 40 else ""
            text += "; choices: " + ", ".join(shown[:40]) + more
        super().__init__(text)


class RegistrationError(CifarlabError):
    """Code in the user package (src/cifarlab_user/) that registers a name wrongly: a name that
    clashes with a built-in one, the same name twice, a builder that cannot be called as needed."""


class DataError(CifarlabError):
    """A missing, corrupt, truncated or hostile data file: the archive, an image, an index."""


#: What torch, torchvision and the torch.nn.init functions raise for an argument they refuse:
#: besides the usual TypeError/ValueError/RuntimeError, an ArithmeticError for a number beyond
#: what they convert (`.inf` where an int is needed, an integer beyond float's range). Every
#: check that tries a component on the user's arguments catches these, plus whatever else
#: that component is known to raise, and turns them into a ParamsError naming the key.
TORCH_ARGUMENT_ERRORS = (TypeError, ValueError, RuntimeError, ArithmeticError)


class ResourceError(CifarlabError):
    """The machine, not the input: not enough free space for what a stage is about to write."""


def size_text(nbytes: float) -> str:
    """1536 -> '1.5 KiB': sizes in messages, in binary units."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"
