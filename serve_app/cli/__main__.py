"""``python -m serve_app.cli``: the same as the ``serve-app`` console script."""
import sys

from serve_app.cli import main

if __name__ == "__main__":
    sys.exit(main())
