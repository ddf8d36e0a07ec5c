"""build() raises: the app must show the error panel and stay usable."""


def build(device):
    sizes = {"hidden": 128}
    return sizes["hiden"]  # deliberate typo: KeyError at load time
