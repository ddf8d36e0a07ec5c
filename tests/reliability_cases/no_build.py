def make(device):
    return None
