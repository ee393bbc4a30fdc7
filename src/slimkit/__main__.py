"""``python -m slimkit`` runs the command line."""

from slimkit.cli import main

if __name__ == "__main__":
    main()
