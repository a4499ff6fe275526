"""Command-line front ends: argparse and main(argv=None) only; the one place that raises SystemExit."""
