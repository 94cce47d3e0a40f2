"""Entry point of the ``nova`` console script: error handling and exit codes.

Exit status: 0 success, 1 an error (the message says what to do), 2 a usage
error. Tracebacks only with ``--debug``. ``nova --version`` answers before
anything else is imported.

The console script (``argv`` not given) first offers the command to a warm
helper (:mod:`nova_core.warm`), which has everything imported already; without
one it runs here and leaves a helper behind for the next command.
"""

# no "from __future__ import annotations": the client imports only built-in modules (~0.2 ms)

import sys


def main(argv: list[str] | None = None) -> int:
    """Run ``nova`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args in (["--version"], ["-V"]):
        from nova_core import __version__

        sys.stdout.write(f"nova {__version__}\n")
        return 0
    if argv is None:
        from nova_core import warm

        if warm.print_key():
            return 0
        text = None  # the helper's key: None when this command runs without one
        try:
            text = warm.key() if warm.eligible(args) else None
            code = warm.run(args, text) if text is not None else None
        except Exception:  # noqa: BLE001 - the helper is only a speed-up: run here instead
            text, code = None, None
        if code is not None:
            _exit_now(code)
        try:
            return run(args)
        finally:
            if text is not None:
                try:
                    warm.spawn(text)
                except Exception:  # noqa: BLE001,S110 - no helper next time, that is all
                    pass
    return run(args)


def _exit_now(code: int) -> None:
    """End the process after the helper ran its command: this process only imported built-in
    modules and wrote nothing itself, so interpreter shutdown (about 2 ms) has nothing to do."""
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code & 0xFF)


def run(args: list[str]) -> int:
    """Run the command ``args`` in this process; return the exit status."""
    debug = "--debug" in args
    import click

    from nova_core.cli.app import cli
    from nova_core.errors import NovaError

    try:
        result = cli.main(args=args, prog_name="nova", standalone_mode=False)
        return int(result or 0)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.exceptions.Abort as abort:
        if isinstance(abort.__cause__, KeyboardInterrupt):  # click's word for Ctrl-C
            sys.stderr.write("interrupted\n")
            return 130
        sys.stderr.write("aborted\n")
        return 1
    except click.ClickException as error:
        error.show()
        return int(error.exit_code)
    except NovaError as error:
        if debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"error: {error}\n")
        return error.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:
        return 1
    except Exception as error:  # noqa: BLE001 - the last line of defence for users
        if debug:
            raise
        sys.stderr.write(
            f"error: unexpected {type(error).__name__}: {error}\n"
            "  hint: run the same command with --debug to see the traceback, and report it\n"
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
