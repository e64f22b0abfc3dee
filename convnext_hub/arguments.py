"""Keyword arguments checked as Python checks them, with the close matches a typo needs.

`create_model` and the other factories pass `**kwargs` on through several
layers (family class, builder, Keras), so a misspelt name such as
`num_clases=5` would otherwise be dropped or reach Keras with a message that
does not name the function the user called.
"""

import difflib
import inspect

__all__ = ["check_keywords", "unknown_argument_message"]


def unknown_argument_message(function, name, accepted):
    """`function() got an unexpected keyword argument 'name'`, with the close matches among `accepted`."""
    message = f"{function}() got an unexpected keyword argument {name!r}"
    close = difflib.get_close_matches(name, sorted(accepted), n=3, cutoff=0.6)
    if close:
        message += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    return message


def check_keywords(function, kwargs, *accepting):
    """Raises TypeError for the first key of `kwargs` that none of `accepting` takes.

    Args:
        function: the name the user called, for the message.
        kwargs: the keyword arguments received.
        *accepting: callables (their named parameters are accepted) or collections of names.
    """
    accepted = set()
    for source in accepting:
        if callable(source):
            accepted.update(
                name
                for name, parameter in inspect.signature(source).parameters.items()
                if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
            )
        else:
            accepted.update(source)
    for name in kwargs:
        if name not in accepted:
            raise TypeError(unknown_argument_message(function, name, accepted))
