"""The command line: argparse, printing and exit codes (the library raises typed errors)."""
