"""Command-line front ends: argparse and main(argv=None) only; the one place that raises SystemExit."""


def one_line(program: str, error: BaseException) -> str:
    """``program: message`` on one line (a library's message may run to several; its lines are joined, none lost)."""
    return f"{program}: " + " ".join(line.strip() for line in str(error).strip().splitlines() if line.strip())
