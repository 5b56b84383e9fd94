"""Starting the browser app from any folder: `workbench app`.

`streamlit run` reads .streamlit/config.toml from the folder it is started in only, so
started elsewhere it would listen on every interface. The launcher passes the address
itself (127.0.0.1 unless another is asked for), and the settings of the checkout's
config file as flags, then becomes the streamlit process (exec), so stopping it stops
the server.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bagel.errors import InputError

ROOT = Path(__file__).resolve().parents[2]  # a source checkout: the app lives beside the package
APP = ROOT / "streamlit_app.py"
CONFIG = ROOT / ".streamlit" / "config.toml"
LOOPBACK = "127.0.0.1"


def streamlit_command(
    address: str = LOOPBACK, port: int | None = None, app_args: Sequence[str] = ()
) -> list[str]:
    """The `python -m streamlit run` command line that serves the app on `address`."""
    if not APP.is_file():
        raise InputError(f"{APP}: not found; the app runs from a source checkout")
    flags = {**config_flags(CONFIG), "server.address": address}
    if port is not None:
        flags["server.port"] = port
    command = [sys.executable, "-m", "streamlit", "run", str(APP)]
    for name, value in flags.items():
        command += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return [*command, "--", *app_args] if app_args else command


def config_flags(path: Path) -> dict[str, object]:
    """The config file's settings as {"section.name": value} (none when it is missing, or
    on a Python without tomllib)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the address is still passed
        return {}
    if not path.is_file():
        return {}
    with open(path, "rb") as f:
        config = tomllib.load(f)
    return {
        f"{section}.{name}": value
        for section, values in config.items()
        if isinstance(values, dict)
        for name, value in values.items()
    }


def run_app(address: str, port: int | None, app_args: Sequence[str]) -> None:
    """Replace this process by the streamlit server (does not return)."""
    command = streamlit_command(address, port, app_args)
    print(f"serving on http://{address}:{port or 8501}", flush=True)
    os.execv(command[0], command)
