"""The product's own exceptions: errors a user can cause, with a message that says what to fix."""


class MomilError(Exception):
    """An error the user can fix; the CLI prints its message without a traceback and exits non-zero."""


class InputError(MomilError):
    """An input breaks the input contract. The message names the file, the column or row, and the fix."""

    def __init__(self, path, problem: str, fix: str | None = None):
        self.path = str(path) if path is not None else None
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        text = f"{where}{problem}"
        if fix:
            text += f" -- {fix}"
        super().__init__(text)
