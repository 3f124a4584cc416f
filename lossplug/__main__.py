"""``python -m lossplug``: the ``lossplug`` command."""

from lossplug.cli import main

if __name__ == "__main__":
    main()
