"""The command lines' shared manners: one-line errors that suggest the closest valid flag or choice,
and help that states each default once."""

from __future__ import annotations

import argparse
import difflib
import re

INVALID_CHOICE = re.compile(r"argument (?P<flag>[^:]+): invalid choice: '(?P<value>[^']*)'")
UNRECOGNIZED = re.compile(r"unrecognized arguments: (?P<args>.*)")


class DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" only where the help does not already speak of the default and there
    is a default worth saying (not None, not an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if "default" in help_text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return help_text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: a mistyped flag or choice gets "did you mean ...?"."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsOnceFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.suggest(message)}\n")

    def suggest(self, message: str) -> str:
        choice = INVALID_CHOICE.match(message)
        if choice:
            action = next((a for a in self._actions if choice["flag"] in a.option_strings or choice["flag"] == a.dest), None)
            options = [str(c) for c in (action.choices or [])] if action else []
            same_but_case = [o for o in options if o.lower() == choice["value"].lower()]
            close = same_but_case or difflib.get_close_matches(choice["value"].lower(), options, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(options)}"
            extra = getattr(action, "unknown_hint", None)  # how to add a choice, where a flag says
            return f"argument {choice['flag']}: invalid choice {choice['value']!r}; {hint}" + \
                (f" ({extra})" if extra and not same_but_case else "")
        unknown = UNRECOGNIZED.match(message)
        if unknown:
            flags = [s for a in self._actions for s in a.option_strings]
            hints = []
            for arg in unknown["args"].split():
                close = difflib.get_close_matches(arg.split("=")[0], flags, n=1, cutoff=0.6) if arg.startswith("-") else []
                hints.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
            return f"unrecognized arguments: {' '.join(hints)}"
        return message
