"""Entry point for `python -m simcli` and `torchrun -m simcli`."""

from simcli.cli.app import main

if __name__ == "__main__":
    main()
