"""A Hugging Face model as HF training code uses it: BERT from a tiny config built in code.

Nothing is downloaded: ``BertConfig`` is written out here, so the weights are
random. Batches are dicts as a tokenizer with padding gives them
(``input_ids``, ``token_type_ids``, ``attention_mask``, ``labels``), the model
is called ``model(**batch)`` and computes its own loss (``loss_fn=None``).
The task: which half of the vocabulary does a sentence mostly use?

Needs the optional package ``transformers`` (``pip install
'torch-workbench[hf]'``). Without it, ``REQUIRES`` below makes ``workbench
list`` and ``workbench check scenarios/`` skip this file and say why, instead
of failing on it.
"""

import torch

from workbench import Scenario

REQUIRES = ("transformers",)

VOCAB = 128
SEQ_LEN = 24


def make_batches(batches: int, batch_size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    half = VOCAB // 2
    for _ in range(batches):
        labels = torch.randint(0, 2, (batch_size,), generator=g)
        # Each sentence mostly uses its class's half of the vocabulary (3 tokens in 4).
        own = 5 + labels[:, None] * (half - 5) + torch.randint(0, half - 5, (batch_size, SEQ_LEN), generator=g)
        other = torch.randint(5, VOCAB, (batch_size, SEQ_LEN), generator=g)
        ids = torch.where(torch.rand(batch_size, SEQ_LEN, generator=g) < 0.75, own, other)
        lengths = torch.randint(SEQ_LEN // 2, SEQ_LEN + 1, (batch_size, 1), generator=g)
        mask = (torch.arange(SEQ_LEN) < lengths).long()
        ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))  # [PAD] = 0, right padding
        ids[:, 0] = 1  # [CLS]
        out.append({"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask,
                    "labels": labels})
    return out


def build(device):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=SEQ_LEN, num_labels=2,
                        pad_token_id=0)
    model = BertForSequenceClassification(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    return Scenario(
        model=model,
        optimizer=optimizer,
        loss_fn=None,  # BertForSequenceClassification returns .loss when given labels
        data=make_batches(16, 16, seed=3),
        eval_data=make_batches(2, 16, seed=4),
        name="hf-bert",
        description="transformers BertForSequenceClassification from a tiny BertConfig (no download), "
                    "dict batches, outputs.loss",
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 5)),
        scheduler_interval="step",
        clip_grad_norm=1.0,
        tags=("transformer", "hf"),
    )
