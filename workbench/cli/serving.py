"""`workbench serve` (the HTTP API) and `workbench app` (the browser app)."""

from __future__ import annotations

import argparse

from workbench.cli.common import EXIT_OK, load_model


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the HTTP API over persistent sessions on one model (the `serve` extra)."""
    from bagel.errors import InputError

    try:
        from workbench.server.run import serve
    except ImportError as err:
        raise InputError(
            f"workbench serve needs {err.name}: pip install 'bagel-workbench[serve]'"
        ) from err
    return serve(args, load_model)


def cmd_app(args: argparse.Namespace) -> int:
    """Serve the browser app on --address (127.0.0.1 unless another is chosen)."""
    from workbench.app.launch import run_app
    from workbench.threads import check_threads

    check_threads(args.threads)
    app_args = []
    for name in ("model", "device", "sessions", "threads"):
        if getattr(args, name) is not None:
            app_args += [f"--{name}", str(getattr(args, name))]
    run_app(args.address, args.port, app_args)
    return EXIT_OK
