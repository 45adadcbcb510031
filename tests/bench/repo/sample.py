import torch
from model import TinyNet

device = "cuda" if torch.cuda.is_available() else "cpu"
model = TinyNet(hidden=8)
checkpoint = torch.load("checkpoints/last.pt", map_location=device)
model.load_state_dict(checkpoint["model"])
model.eval()
print(model(torch.ones(1, 4)))
