"""``python -m enmei`` is the ``enmei`` command."""

from enmei.cli import main

if __name__ == "__main__":
    main()
