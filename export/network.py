"""The PyTorch crystal network, whose parameter names the data team's state_dicts use."""

import torch
from torch import nn

from export.classes import N_CLASSES
from serve.contract import N_FEATURES

HIDDEN = 50


class CrystalNet(nn.Module):
    """Linear(4, 50) -> ReLU -> Linear(50, 50) -> ReLU -> Linear(50, 3) -> softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Linear(N_FEATURES, HIDDEN)
        self.layer2 = nn.Linear(HIDDEN, HIDDEN)
        self.layer3 = nn.Linear(HIDDEN, N_CLASSES)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Scores before softmax: training takes the cross-entropy of these for stability."""
        return self.layer3(torch.relu(self.layer2(torch.relu(self.layer1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)
