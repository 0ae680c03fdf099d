"""`python -m aep` runs the server, like the `ad-event-processor` command."""

from aep.cli import main

if __name__ == "__main__":
    main()
