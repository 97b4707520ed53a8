"""rmrouter's command line, run from a checkout: `python cli.py --help`. Same as the `rmrouter` console script."""

from rmrouter.cli import main

if __name__ == "__main__":
    main()
