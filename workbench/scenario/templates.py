"""Scenario templates written by ``workbench init``: commented, and passing ``workbench check`` as written."""

from __future__ import annotations

PLAIN = '''\
"""{title}

Written by `workbench init`. Replace the model, the data and the optimizer with
yours; `workbench check {filename}` tells you when something does not fit.
"""

import torch
from torch import nn

from workbench import Scenario
{model_import}

def build(device):
    torch.manual_seed(0)
{model_lines}

    # data: anything re-iterable (a DataLoader, a list of batches). A batch may be
    #   (inputs, targets)           -> model(*inputs), loss_fn(outputs, targets)
    #   {{"x": ..., "labels": ...}}  -> model(**batch), loss_fn(outputs, batch)
    #   any other structure         -> give forward=lambda model, batch: ...
    # Tensors are moved to `device` for you; other values pass through.
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(512, 16, generator=g)
    ys = (xs[:, :4].sum(1) > 0).long()  # a learnable rule: 2 classes
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=32, shuffle=True)

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    return Scenario(
        model=model,
        optimizer=optimizer,
        loss_fn=nn.CrossEntropyLoss(),  # or None when the model returns .loss; may return a dict of parts
        data=data,
        description="{description}",
        # -- optional, as your training loop does it ------------------------------------
        # scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9),
        # scheduler_interval="epoch",  # "step" (default) or "epoch" (one pass over data)
        # scheduler_step=lambda sched, step, epoch: sched.step_update(step),  # timm-style
        # clip_grad_norm=1.0,          # the engine clips and records the norm before/after
        # before_step=lambda model, optimizer: None,  # after backward: EMA, gradient surgery
        # amp="bf16",                  # or "fp16" (with a GradScaler), as you train
        # batch_dim=1,                 # time-major batches (seq, batch, ...)
        # forward=lambda model, batch: model(batch["x"]),  # when the model takes the batch its own way
        # eval_data=...,               # held-out batches for the bench's quality column
        # carries_state=True, state=lambda: ..., load_state=lambda value: ...,  # state outside the model
    )
'''

PLAIN_MODEL = '''\
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 2)).to(device)'''

CLASS_MODEL = '''\
    # Pass your constructor's arguments; the data below must fit what forward() takes.
    model = {cls}().to(device)'''

HF = '''\
"""{title}

Written by `workbench init --hf`. A Hugging Face model built from a tiny config
(nothing is downloaded), dict batches as a tokenizer gives them, and the loss
computed inside the model (loss_fn=None reads outputs.loss). Replace the config
with yours, or load weights with from_pretrained inside build().
"""

import torch

from workbench import Scenario

REQUIRES = ("transformers",)  # `workbench list` skips this file, naming why, where it is missing


def build(device):
    from transformers import {config_class}, {model_class}

    torch.manual_seed(0)
    config = {config_class}({config_args})
    model = {model_class}(config).to(device)

    # Batches as a tokenizer + DataCollator give them: input_ids, attention_mask, labels.
    # The model is called model(**batch); with labels it returns .loss.
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(8):
        ids = torch.randint(0, config.vocab_size, (8, 32), generator=g)
        labels = {labels}
        data.append({{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}})

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    return Scenario(
        model=model,
        optimizer=optimizer,
        loss_fn=None,  # the model's own loss: outputs.loss
        data=data,
        description="{description}",
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 4)),
        scheduler_interval="step",
        # A guard against spikes, set above the gradient norm (~1.2) this tiny model trains at:
        # a max_norm that every step exceeds rescales every update (`workbench check` warns
        # grad_clipping). Size yours from the gradient norms `workbench run` shows.
        clip_grad_norm=5.0,
        # amp="bf16",  # as you train
    )
'''

GPT2 = dict(config_class="GPT2Config", model_class="GPT2LMHeadModel",
            config_args="vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0",
            labels="ids.clone()  # GPT-2 shifts the labels itself")


def render(filename: str, *, model: str | None = None, hf: bool = False) -> str:
    """The template text. ``model``: ``pkg.module:Class`` (plain), or with ``hf`` a transformers
    model class (``BertForMaskedLM`` or ``transformers:BertForMaskedLM``) configured tiny."""
    cls = (model.rpartition(":")[2] or model) if model else None
    title = f"A scenario for {cls}." if cls else "A scenario for the workbench."
    if hf:
        fields = dict(GPT2)
        if cls:
            fields.update(
                model_class=cls, config_class=f"{cls}.config_class",
                config_args=("vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, "
                             "intermediate_size=128, max_position_embeddings=64"),
                labels=("ids.clone()  # an LM's labels; a ...ForSequenceClassification takes "
                        "torch.randint(0, config.num_labels, (8,))"))
            text = HF.replace("from transformers import {config_class}, {model_class}",
                              "from transformers import {model_class}")
            return text.format(title=title, description=f"tiny {cls} from a config built in code", **fields)
        return HF.format(title=title, description="tiny GPT-2 LM from a config built in code", **fields)
    if model:
        module, _, name = model.partition(":")
        return PLAIN.format(title=title, filename=filename, description=f"{name} on synthetic data",
                            model_import=f"from {module} import {name}\n",
                            model_lines=CLASS_MODEL.format(cls=name))
    return PLAIN.format(title=title, filename=filename, description="2-layer MLP on synthetic data",
                        model_import="", model_lines=PLAIN_MODEL)
