"""One module per subcommand; see workbench/cli.py for the protocol."""
