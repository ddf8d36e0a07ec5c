"""A scenario whose name and description hold text that looks like rich markup."""

from tests.reliability_cases._tiny import tiny


def build(device):
    return tiny(device, name="cifar [/mnt/data/cifar]", description="reads [red]raw[/red] files from [bold]")
