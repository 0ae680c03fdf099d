"""`ad-event-processor`: the server command."""

from __future__ import annotations

import argparse
import asyncio
import sys
import textwrap
from pathlib import Path
from typing import Any

from aep import __version__
from aep.settings import (
    CONFIG_PATH_ENV,
    DURATION_FORMS,
    SIZE_FORMS,
    ConfigError,
    Settings,
    iter_env_names,
    load_settings,
    render_settings,
)
from aep.tools import dead_letter_replay as replay

_USAGE = """\
%(prog)s [-h] [--config PATH] [--print-config] [--version]
       %(prog)s replay-dlq [--config PATH] [PATH ...]"""

_EPILOG = """\
configuration: defaults < YAML file (--config or {config_env}) < environment.
Every key has an env var: AEP_ + the key path in upper case joined by single
underscores, e.g. batch.flush_interval -> AEP_BATCH_FLUSH_INTERVAL=200ms.
{forms}

environment variables (key = default):
{env_names}

exit codes: 0 stopped cleanly with everything acknowledged stored; 1 the
shutdown could not write everything (what was left is in the dead-letter
file); 2 bad configuration; 3 start-up failed (store or port); 130 forced by a
second signal.

commands:
  replay-dlq [--config PATH] [PATH...]   send dead-lettered events to the
                                         configured store again; see
                                         `ad-event-processor replay-dlq --help`
"""


def _env_lines() -> str:
    """One line per env var: its key and the default, in the form the config takes."""
    defaults: Any = Settings().model_dump(mode="json")
    lines = []
    for name, path in iter_env_names():
        default = defaults
        for part in path:
            default = default[part]
        if default is None:
            default = "unset"
        elif isinstance(default, bool):
            default = "true" if default else "false"  # as YAML and env vars write it
        lines.append(f"  {name:<42} {'.'.join(path)} = {default}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    forms = "\n".join(textwrap.wrap(f"{DURATION_FORMS} {SIZE_FORMS}", 78))
    parser = argparse.ArgumentParser(
        prog="ad-event-processor",
        usage=_USAGE,
        description="Ingest ad events over gRPC, batch them and store them "
        "(JSON Lines files by default).",
        epilog=_EPILOG.format(config_env=CONFIG_PATH_ENV, forms=forms, env_names=_env_lines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help=f"YAML configuration file (or ${CONFIG_PATH_ENV})",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration as YAML and exit",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    replay_dlq = commands.add_parser(
        "replay-dlq",
        help="send dead-lettered events to the configured store again",
        description=replay.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay_dlq.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        default=argparse.SUPPRESS,  # keep a --config given before the command
        help=f"YAML configuration file (or ${CONFIG_PATH_ENV}); names the store",
    )
    replay_dlq.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="dead-letter files or directories (default: dead_letter.dir)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as error:
        print(f"ad-event-processor: {error}", file=sys.stderr)
        sys.exit(2)
    if args.print_config:
        sys.stdout.write(render_settings(settings))
        return
    if args.command == "replay-dlq":
        from aep.tools.dead_letter_replay import replay_dead_letters

        sys.exit(asyncio.run(replay_dead_letters(settings, args.paths)))
    from aep.app import serve
    from aep.observability.logs import configure_logging

    configure_logging(settings.logging)
    sys.exit(asyncio.run(serve(settings)))
