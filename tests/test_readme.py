"""The README's usage example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README.md has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # our own README, not user input
    assert tuple(namespace["spectra"].shape) == (256, 512)
    assert not namespace["observed"].isnan().any()
    assert namespace["logits"].grad is not None
    z = namespace["z"].double()
    inside = (z > 1.005) & (z < 1.795)  # soft labels within 5 σ of the range's ends are truncated there
    assert (namespace["summary"].z_mode - z)[inside].abs().max() < 1e-4
