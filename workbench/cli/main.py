"""`workbench`'s entry point: parse the command line, run the verb, map its end to an
exit code.

Exit codes:
    0    ok (for `replay`: every frame and text reproduced exactly)
    1    failure: an unexpected error (printed with its traceback), a scenario of
         `run` / `demo` that failed once running (the others still run), or a `replay`
         that differs
    2    bad input: a file, argument, folder or checkpoint the user can fix (one line
         naming it); `run` and `demo` check every scenario, output folder and the model
         before running any, so then nothing has run or been written
    130  interrupted (Ctrl-C), after the steps that finished were saved
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable

from workbench.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED
from workbench.cli.parser import build_parser


def main(argv: list[str] | None = None) -> int:
    from bagel.errors import BagelError

    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        if getattr(args, "uses_threads", False):
            from workbench.threads import use_threads

            use_threads(args.threads)
        return command(args)
    except BagelError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        return EXIT_FAILED
