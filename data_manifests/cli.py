"""`vl data`: dataset manifests. The converters and the demo world come with issue 3."""
import click

from vl.shared.cli import not_yet_available


@click.group()
def data() -> None:
    """Dataset manifests: one JSONL line per example, read by every stage.

    \b
    vl data convert DATASET ...   official release files -> manifest
    vl data check M.jsonl         validate a manifest, count it, find missing media
    vl data demo --out DIR        write the synthetic shapes world
    """


_ISSUE = "dataset converters are tracked in issue 3"
data.add_command(not_yet_available("convert", "Convert official dataset files into a manifest.", _ISSUE))
data.add_command(not_yet_available("check", "Validate a manifest and report its counts and missing media.", _ISSUE))
data.add_command(not_yet_available("demo", "Write the synthetic shapes world in the official formats.", _ISSUE))
