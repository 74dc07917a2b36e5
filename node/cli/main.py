"""The ``comity`` command (console script ``comity = node.cli.main:run``; also ``python -m node.cli.main``).

Every failure ends as one line on standard error and an exit code from ``exits``; set
``COMITY_DEBUG=1`` to see the traceback as well.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from . import keys_cmds, node_cmds, peer_cmds
from .exits import EXIT_OK, EXIT_USAGE, describe, exit_code_for

app = typer.Typer(
    no_args_is_help=True,
    help="Comity node: direct, signed, encrypted exchange of MLA and extradition requests.",
    pretty_exceptions_enable=False,
)

# the node's own keys, and its public card
app.command("init")(keys_cmds.init)
app.command("card")(keys_cmds.card)
app.command("fingerprint")(keys_cmds.fingerprint)
app.add_typer(keys_cmds.keys_app, name="keys")
# pinned peers
app.add_typer(peer_cmds.peer_app, name="peer")
# running the node and working with it: serve, worker, send, status, inbox, db, audit
node_cmds.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code; never lets a traceback out (unless COMITY_DEBUG=1)."""
    command = typer.main.get_command(app)
    try:
        # standalone mode: the command-line library reports usage errors itself (exit 2)
        command.main(args=argv, prog_name="comity", standalone_mode=True)
    except SystemExit as e:
        return _exit_status(e.code)
    except KeyboardInterrupt:
        typer.echo("comity: interrupted", err=True)
        return 130
    except Exception as e:  # every failure becomes one line and an exit code
        if os.environ.get("COMITY_DEBUG") == "1":
            traceback.print_exc()
        typer.echo(f"comity: error: {describe(e)}", err=True)
        return exit_code_for(e)
    return EXIT_OK


def _exit_status(code: object) -> int:
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    typer.echo(str(code), err=True)
    return EXIT_USAGE

def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
