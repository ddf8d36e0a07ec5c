"""Collaborative filtering: user and item embeddings, dot-product rating, MSELoss.

Ratings come from hidden low-rank user/item factors plus biases and noise.
Inputs are ``(user_ids, item_ids)``: a two-input model.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench import Scenario

USERS, ITEMS, TRUE_RANK = 300, 400, 6


def make_ratings(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(40)  # the hidden tastes: the same for train and held-out
    u_f = torch.randn(USERS, TRUE_RANK, generator=g) / TRUE_RANK**0.5
    i_f = torch.randn(ITEMS, TRUE_RANK, generator=g) / TRUE_RANK**0.5
    u_b = 0.3 * torch.randn(USERS, generator=g)
    i_b = 0.3 * torch.randn(ITEMS, generator=g)
    g_data = torch.Generator().manual_seed(seed)
    users = torch.randint(0, USERS, (n,), generator=g_data)
    items = torch.randint(0, ITEMS, (n,), generator=g_data)
    ratings = 3.0 + 2.5 * (u_f[users] * i_f[items]).sum(1) + u_b[users] + i_b[items]
    ratings += 0.1 * torch.randn(n, generator=g_data)
    return TensorDataset(users, items, ratings)


class DotProductRecommender(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.user = nn.Embedding(USERS, dim)
        self.item = nn.Embedding(ITEMS, dim)
        self.user_bias = nn.Embedding(USERS, 1)
        self.item_bias = nn.Embedding(ITEMS, 1)
        self.global_bias = nn.Parameter(torch.tensor(0.0))
        for emb in (self.user, self.item):
            nn.init.normal_(emb.weight, std=0.1)
        for emb in (self.user_bias, self.item_bias):
            nn.init.zeros_(emb.weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (self.user(users) * self.item(items)).sum(dim=1)
        return dot + self.user_bias(users).squeeze(1) + self.item_bias(items).squeeze(1) + self.global_bias


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, ds: TensorDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        user, item, rating = self.ds[i]
        return (user, item), rating


def build(device):
    torch.manual_seed(0)
    model = DotProductRecommender().to(device)
    return Scenario(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=2e-2),
        loss_fn=nn.MSELoss(),
        data=DataLoader(_Pairs(make_ratings(16384, seed=41)), batch_size=256, shuffle=True,
                        generator=torch.Generator().manual_seed(42)),
        eval_data=DataLoader(_Pairs(make_ratings(1024, seed=43)), batch_size=512),
        name="collab-filter",
        description="user/item embeddings with biases, dot-product rating, MSELoss, 2 inputs",
        seed=0,
    )
