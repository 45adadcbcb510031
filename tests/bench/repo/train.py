import torch
from model import TinyNet

if __name__ == "__main__":
    model = TinyNet(hidden=8)
    torch.save(model.state_dict(), "tiny.pt")
    torch.save({"model": model.state_dict(), "epoch": 1}, "checkpoints/last.pt")
