"""The one exception type for mistakes a user can fix, the one check for options that
exclude each other, and notes: what a command did that the user should know."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence


class UserError(ValueError):
    """Bad input from the user: a missing file, a wrong dataset path, a bad config key...

    The message is one line saying what is wrong and how to fix it. The CLI prints it as
    ``error: <message>`` and exits with status 2, without a traceback (``--debug`` shows it).

    Library code names its parameters, not the CLI's flags: a message may hold ``{name}``
    for each parameter listed in ``options``. ``str()`` spells them as the parameter names;
    the CLI renders them as its flags (:meth:`render`).
    """

    def __init__(self, message: str, *, options: Sequence[str] = ()) -> None:
        self.template, self.options = message, tuple(options)
        super().__init__(self.render())

    def render(self, spell: Callable[[str], str] = str) -> str:
        """The message with each ``{option}`` written as ``spell(option)``."""
        text = self.template
        for name in self.options:
            text = text.replace("{" + name + "}", spell(name))
        return text


def check_exclusive(**given: bool) -> None:
    """UserError if more than one of the named parameters is given (``True``), e.g.
    ``check_exclusive(resume=resume, overwrite=overwrite)``."""
    names = [name for name, value in given.items() if value]
    if len(names) > 1:
        raise UserError(" and ".join("{" + n + "}" for n in names) + " exclude each other; give one, not both",
                        options=names)


class Note(UserWarning):
    """Something the user should know that did not stop the command: an input used although
    unfinished (``allow_incomplete``). The CLI prints it as ``note: <message>`` on stderr;
    Python callers get it as a warning."""


def note(message: str | None) -> None:
    """Tell the user ``message`` as a :class:`Note`; nothing for None (e.g. ``note(check(...))``
    where a check returns a note or None)."""
    if message:
        warnings.warn(message, Note, stacklevel=2)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in a command that keeps what it has written (a ``last.pt``, finished blocks).

    ``kept`` says what, in one line (``"3 of 8 blocks of 'affs.zarr' written and kept"``);
    ``resumable``: rerunning the command with ``--resume`` continues from it (else the command
    starts again). The CLI prints ``interrupted: <kept>; continue with `<command> --resume```
    on stderr and exits with status 130, without a traceback. ``command``: the words after
    ``psc-seg`` that continue, where that is not the command line with ``--resume`` (``train
    --resume RUN_DIR``); a command may set it when it knows them."""

    def __init__(self, kept: str, *, resumable: bool = True) -> None:
        super().__init__(kept)
        self.kept, self.resumable = kept, resumable
        self.command: list[str] | None = None
