"""Local stand-ins for transformer-family models we cannot import here, as scenarios.

timm and torchvision need a CPU torchvision wheel this machine does not have, so their
shapes are written out: a ViT (patch embedding by a strided Conv2d, pre-norm blocks with
LayerScale, ``nn.Identity`` drop-path, eval-time ``nn.Dropout``, attention through
``F.scaled_dot_product_attention``), an ``nn.TransformerEncoder`` classifier fed a
padding mask (batch_first: eval mode takes the nested-tensor fast path), a weight-tied
language model, an attention-pooling classifier (the bias of its score layer has a zero
gradient in truth: softmax cancels it), and the shapes the debugger must not crash on
(complex weights, sparse gradients, float64, a PINN forward that differentiates itself).

Load one as ``tests/transformer_shapes.py:build_vit`` and so on.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from workbench.scenario import Scenario


class PatchEmbed(nn.Module):
    def __init__(self, patch: int = 4, dim: int = 32) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.norm = nn.Identity()  # timm: norm_layer=None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # B, N, C: a view, no copy


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.drop_path1 = nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(0.1), nn.Linear(4 * dim, dim))
        self.ls2 = LayerScale(dim)
        self.drop_path2 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class TinyViT(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2, classes: int = 5) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(4, dim)
        self.pos_drop = nn.Dropout(0.1)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head_drop = nn.Dropout(0.1)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.blocks(self.pos_drop(self.patch_embed(x))))
        return self.head(self.head_drop(x.mean(1)))


class EncoderClassifier(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 32, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(ids), src_key_padding_mask=pad)[:, 0])


class TiedLM(nn.Module):
    """Embedding and output projection share one matrix (Press & Wolf weight tying)."""

    def __init__(self, vocab: int = 40, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.decoder = nn.Linear(dim, vocab)
        self.decoder.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.rnn(self.embed(ids))[0])


class AttentionPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 32)
        self.score = nn.Linear(32, 1)  # its bias shifts every score alike: softmax cancels it
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.proj(x))
        w = torch.softmax(self.score(h), dim=1)
        return self.head((w * h).sum(1))


class ComplexLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8, dtype=torch.complex64)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.lin(x.to(torch.complex64)).abs())


class PINN(nn.Module):
    """u(x) and du/dx: the forward differentiates its output by its input."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.requires_grad_(True)
        u = self.net(x)
        (du,) = torch.autograd.grad(u.sum(), x, create_graph=True)
        return du + u


def _scenario(model: nn.Module, data: list, loss_fn: nn.Module, name: str) -> Scenario:
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), loss_fn=loss_fn,
                    data=data, name=name)


def padding_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (8, 6) and a padding mask: every other sequence ends after 4 tokens."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (8, 6), generator=g)
    pad = torch.zeros(8, 6, dtype=torch.bool)
    pad[::2, 4:] = True
    return ids, pad


def build_vit(device):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 5, (4,), generator=g)
    return _scenario(TinyViT().to(device), [(x, y)], nn.CrossEntropyLoss(), "tiny-vit")


def build_encoder(device):
    torch.manual_seed(0)
    ids, pad = padding_batch()
    y = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(2))
    return _scenario(EncoderClassifier().to(device), [((ids, pad), y), ((ids.flip(0), pad.flip(0)), y.flip(0))],
                     nn.CrossEntropyLoss(), "encoder-padding-mask")


def build_tied(device):
    torch.manual_seed(0)
    ids = torch.randint(0, 40, (4, 7), generator=torch.Generator().manual_seed(1))
    model = TiedLM().to(device)
    return Scenario(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                    loss_fn=lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
                    data=[(ids[:, :-1], ids[:, 1:])], name="tied-lm")


def build_pool(device):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 10, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    return _scenario(AttentionPool().to(device), [(x[:32], y[:32]), (x[32:], y[32:])], nn.CrossEntropyLoss(),
                     "attention-pool")


def build_complex(device):
    torch.manual_seed(0)
    x, y = torch.randn(16, 8), torch.randn(16, 2)
    return _scenario(ComplexLinear().to(device), [(x, y)], nn.MSELoss(), "complex")


def build_sparse(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 8, sparse=True), nn.Flatten(), nn.Linear(32, 2)).to(device)
    x = torch.randint(0, 20, (16, 4), generator=torch.Generator().manual_seed(1))
    return _scenario(model, [(x, torch.randn(16, 2))], nn.MSELoss(), "sparse-embedding")


def build_float64(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2)).double().to(device)
    x, y = torch.randn(16, 8, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    return _scenario(model, [(x, y)], nn.MSELoss(), "float64")


def build_pinn(device):
    torch.manual_seed(0)
    x = torch.rand(32, 1, generator=torch.Generator().manual_seed(1))
    return _scenario(PINN().to(device), [(x, torch.zeros(32, 1))], nn.MSELoss(), "pinn")
