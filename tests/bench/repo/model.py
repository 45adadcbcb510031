import torch.nn as nn


class TinyNet(nn.Module):
    def __init__(self, hidden=16):
        super().__init__()
        self.encoder = nn.Linear(4, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.encoder(x).relu())
