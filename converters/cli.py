"""What both command-line tools share: framework start-up, logging, and one-line errors.

A user's mistake (a missing file, an unknown name, the Hub out of reach, a
file that is no checkpoint, an unwritable folder) ends the command with one
`error: ...` line (and at most a `hint: ...` line) and exit status 2; `--debug`
shows the traceback instead.
"""

import contextlib
import logging
import os
import sys
import traceback

EXIT_USER_ERROR = 2


class MissingDependencyError(ImportError):
    """An optional package the command needs is not installed."""


def add_common_arguments(parser):
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def start_frameworks(need_timm):
    """Imports torch and timm (when needed) before Keras, then Keras with TensorFlow's start-up lines hidden.

    On some Linux machines TensorFlow imported before torchvision crashes the
    process, so the order is fixed here. TensorFlow's C++ start-up lines (CUDA
    probing on CPU machines) go to the process's stderr before any setting can
    silence them: stderr is pointed at /dev/null while Keras imports and finds its devices.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if need_timm:
        try:
            import timm  # noqa: F401
            import torch  # noqa: F401
        except ImportError as e:
            raise MissingDependencyError(
                f"this needs torch and timm ({e.name} is not installed): pip install 'convnext_hub[torch]'"
            ) from None
    with _stderr_silenced():
        import keras

        keras.ops.convert_to_numpy(keras.ops.zeros(1))  # device discovery prints its CUDA probe here


@contextlib.contextmanager
def _stderr_silenced():
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real file descriptor 2 (embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def setup_logging():
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)


def run(body, debug=False):
    """`body()`'s exit status; a user error prints one line and gives `EXIT_USER_ERROR`."""
    try:
        return body()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, ImportError, KeyError) as error:
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(error)}", file=sys.stderr)
        hint = getattr(error, "hint", None)
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return EXIT_USER_ERROR


def one_line(error):
    """The message of `error` on one line (an OSError's filename included)."""
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
        message = f"{error.filename}: {error.strerror or message}"
    return " ".join(message.split()) or type(error).__name__
