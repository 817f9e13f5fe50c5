"""`python -m slimforge` runs the CLI."""

from slimforge.cli import app

if __name__ == "__main__":
    app()
