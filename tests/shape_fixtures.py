"""Model sources whose forward fails on a shape, shared by the shape-check tests."""

# fc1 sized for 3200 features where the forward gives it 64 x 7 x 7 = 3136
MNIST = """
import torch
import torch.nn.functional as F
from torch import nn


# torchls: input=(1, 1, 28, 28)
class MnistNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(3200, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc1(x)
"""

# Two mistakes: conv2's in_channels, and fc's in_features after it. Fixing conv2 alone moves
# the failure to fc; a fix carries both edits.
TWO_MISTAKES = """
import torch
from torch import nn


# torchls: input=(1, 3, 32, 32)
class TwoMistakes(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))
"""
