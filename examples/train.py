"""A training script with the mistakes torchls points out.

Run `python make_checkpoints.py` first to create checkpoints/.
"""

import torch
from model import SmallConvNet
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

model = SmallConvNet(num_classes=10)

# Saved from a DataParallel model: every key starts with "module.".
model.load_state_dict(torch.load("checkpoints/dataparallel.pt"))

# A whole training checkpoint: the weights are under ["state_dict"].
checkpoint = torch.load("checkpoints/training.ckpt")
model.load_state_dict(checkpoint)

x = torch.randn(256, 3, 32, 32)
y = torch.randint(0, 10, (256,))
loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()

for epoch in range(2):
    model.train()
    for inputs, targets in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch}: loss {loss.item():.3f}")
